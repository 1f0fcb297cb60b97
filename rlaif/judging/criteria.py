"""Per-prompt rubrics: weighted criteria carried in the prompt file, scored by the judge model.

A prompt row carries its criteria in a field (any name), e.g.
``{"prompt": "...", "rubric": [{"criterion": "Names the capital city", "weight": 2},
{"criterion": "Mentions a wrong date", "weight": -1}]}``: a positive weight is wanted, a negative
one a pitfall. Between modules the criteria are a plain ``list[dict]`` with ``criterion`` (str) and
``weight`` (float, non-zero); `parse_criteria` checks a row's value (1 to `MAX_CRITERIA` items).

Scoring (Rubrics as Rewards, Gunjal et al. 2025, arXiv 2507.17746): one judge call per completion
lists every criterion; the judge answers one line per criterion, ``N: s`` with s in {0, 1, 2}
(0 = not met, 1 = partly, 2 = fully); a JSON object or list is read too (`parse_answer`). With
``m_i = s_i / 2`` the raw score is ``R = sum_i w_i m_i`` (a met pitfall subtracts |w_i|); it lies
in ``[R_min, R_max] = [sum_{w_i<0} w_i, sum_{w_i>0} w_i]`` and the reward is
``(R - R_min) / (R_max - R_min)`` in [0, 1] (`criteria_reward`). An answer that does not score
every criterion is None: the sample is masked, never guessed.

`CriteriaRubric` lets ``rlaif run --rubric criteria:FIELD`` judge candidates this way beside file
rubrics (method ``criteria``, scale [0, 1]).

Scoring ``yes_no`` (the default; ``lines`` is the one above): one question per criterion, "Does the
answer meet this criterion: C? Answer Yes or No.", and the judge's next-token probabilities give
``s_i = 2 P(Yes) / (P(Yes) + P(No))`` in [0, 2] (continuous; the G-Eval reading of the ``logprob``
method, `rlaif.judging.verdicts.softmax_over`), then the same reward. All questions of a batch go in
one ``choice_logprobs`` call; a criterion with no probability on either token masks its completion.
It is the default because any engine with next-token log-probs can do it, the embedded 135M judge
included, which cannot write the ``N: s`` lines (BENCHMARKS.md, "Per-prompt rubrics"), and its
scores vary continuously, so a GRPO group rarely ties. Pick ``lines`` with a ``:lines`` suffix
(``rubrics:FIELD:lines``, ``criteria:FIELD:lines``) for a judge that follows the format but gives
no log-probs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from rlaif.backends.base import Backend, Conversation, SamplingParams
from rlaif.errors import UserError
from rlaif.io.seeds import stable_seed
from rlaif.judging.criteria_lint import weight_error
from rlaif.judging.items import JudgeItem, Request
from rlaif.judging.templates import last_user_message
from rlaif.judging.verdicts import softmax_over

MAX_CRITERIA = 20
SPEC_PREFIX = "criteria:"  # `rlaif run --rubric criteria:FIELD`
TOKENS_PER_CRITERION = 6  # "12: 2\n" and some slack
SCORINGS = ("yes_no", "lines")  # the first is the default
YES_NO = ("Yes", "No")
QUESTION = ("Question: {question}\nAnswer: {response}\n\n"
            "Does the answer meet this criterion: {criterion}? Answer Yes or No.")
INSTRUCTIONS = ("Rate the answer on each item (2 = yes, 1 = partly, 0 = no):\n{checklist}\n\n"
                "Reply with the scores only, one line per item, like:\n1: 2\n2: 0")


def split_target(target: str) -> tuple[str, str]:
    """``FIELD`` or ``FIELD:SCORING`` as ``(field, scoring)``; an unknown scoring is a UserError."""
    name, _, scoring = target.partition(":")
    scoring = scoring.strip() or SCORINGS[0]
    if scoring not in SCORINGS:
        raise UserError(f"'{target}': unknown criteria scoring '{scoring}' "
                        "(expected FIELD, FIELD:yes_no or FIELD:lines)")
    return name.strip(), scoring


def parse_criteria(value: Any, source: str, field_name: str) -> list[dict[str, Any]]:
    """A prompt row's criteria as ``[{"criterion": str, "weight": float}]``; a bad value is a one-line
    UserError ``source: field 'FIELD': why`` (``source`` is the row's ``file:line``)."""
    at = f"{source}: field '{field_name}'"
    if value is None:
        raise UserError(f"{at}: missing; every prompt needs its list of criteria "
                        "([{\"criterion\": \"...\", \"weight\": 1}, ...])")
    if not isinstance(value, list):
        raise UserError(f"{at}: expected a list of criteria, got {type(value).__name__}")
    if not value:
        raise UserError(f"{at}: the list of criteria is empty")
    if len(value) > MAX_CRITERIA:
        raise UserError(f"{at}: {len(value)} criteria; at most {MAX_CRITERIA} per prompt")
    out = []
    for index, item in enumerate(value):
        here = f"{at}[{index}]"
        if not isinstance(item, dict):
            raise UserError(f"{here}: expected {{\"criterion\": \"...\", \"weight\": number}}, got {item!r}")
        text = item.get("criterion")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{here}: 'criterion' is missing or not a non-empty string")
        weight = item.get("weight")
        why = weight_error(weight)
        if why:
            raise UserError(f"{here}: {why}")
        out.append({"criterion": " ".join(text.split()), "weight": float(weight)})
    return out


def check_criteria(fields: Sequence[str], rows: Iterable[tuple], sources: Mapping[str, str] | None = None) -> None:
    """Parse every row's criteria in each of ``fields``; rows are ``(id, metadata)`` or ``(id, metadata,
    "file:line")``. The first bad one raises, named by its file:line (from the row or ``sources``)."""
    for row in rows:
        pid, metadata = row[0], row[1]
        for name in fields:
            try:
                parse_criteria(metadata.get(name), "", name)
            except UserError:
                source = row[2] if len(row) > 2 else sources.get(pid) if sources else None
                parse_criteria(metadata.get(name), source or f"item '{pid}'", name)


def criteria_conversation(messages: list[dict[str, str]], response: str,
                          criteria: Sequence[dict[str, Any]]) -> Conversation:
    """The judge chat for one response: the request, the answer, the numbered checklist, the format.

    Plain labels, no system text and no ``<<<...>>>`` fences: with them the embedded 135M judge
    echoed the fences instead of answering; with this chat it answers in the ``N: s`` format."""
    checklist = "\n".join(f"{index}. {item['criterion']}" for index, item in enumerate(criteria, 1))
    user = (f"Question: {last_user_message(messages)}\nAnswer: {response}\n\n"
            + INSTRUCTIONS.format(checklist=checklist))
    return [{"role": "user", "content": user}]


_LINE = re.compile(r"^\W*(?:item|criterion|no\.?)?\s*#?(\d{1,2})\s*[:.)=\-]+\s*(?:score\s*[:=]?\s*)?([0-2])(?![\d.])",
                   re.IGNORECASE | re.MULTILINE)
_BARE = re.compile(r"^\s*([0-2])\s*$", re.MULTILINE)


def _json_scores(text: str, count: int) -> list[int] | None:
    """``{"1": 2, "2": 0}`` or ``[2, 0]`` somewhere in the text, else None."""
    for match in re.finditer(r"[\[{][^\[\]{}]*[\]}]", text):
        try:
            value = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(value, dict):
            by_number = {str(key).strip(): score for key, score in value.items()}
            value = [by_number.get(str(index)) for index in range(1, count + 1)]
        if isinstance(value, list) and len(value) == count and all(
                not isinstance(s, bool) and isinstance(s, int) and 0 <= s <= 2 for s in value):
            return list(value)
    return None


def parse_answer(text: str, count: int) -> list[int] | None:
    """The judge's score (0-2) for each of ``count`` criteria, or None if any is missing.

    Read in order: a JSON object ``{"1": s, ...}`` or list ``[s, ...]``; lines ``N: s`` (also
    ``N. s``, ``N) s``, ``Item N: s``; the first line of each number wins); exactly ``count`` lines
    holding a bare score."""
    found = _json_scores(text, count)
    if found is not None:
        return found
    scores: dict[int, int] = {}
    for match in _LINE.finditer(text):
        scores.setdefault(int(match.group(1)), int(match.group(2)))
    if all(index in scores for index in range(1, count + 1)):
        return [scores[index] for index in range(1, count + 1)]
    bare = _BARE.findall(text)
    return [int(s) for s in bare] if len(bare) == count else None


def yes_no_conversation(messages: list[dict[str, str]], response: str, criterion: str) -> Conversation:
    """The judge chat asking whether one response meets one criterion (answered by its first token)."""
    return [{"role": "user", "content": QUESTION.format(question=last_user_message(messages), response=response,
                                                        criterion=criterion.rstrip(".?! "))}]


def yes_no_score(logprobs: Mapping[str, float]) -> float | None:
    """``2 P(Yes) / (P(Yes) + P(No))`` from the next-token log-probs; None with no mass on either."""
    try:
        distribution, _ = softmax_over(logprobs, YES_NO)
    except ValueError:
        return None
    return 2.0 * distribution[YES_NO[0]]


def criteria_reward(criteria: Sequence[dict[str, Any]], scores: Sequence[float] | None) -> float | None:
    """RaR's normalised reward ``(sum_i w_i s_i/2 - R_min) / (R_max - R_min)`` with ``R_max`` the sum
    of the positive weights and ``R_min`` the sum of the negative ones (None stays None)."""
    if scores is None:
        return None
    raw = sum(item["weight"] * score / 2 for item, score in zip(criteria, scores, strict=True))
    high = sum(item["weight"] for item in criteria if item["weight"] > 0)
    low = sum(item["weight"] for item in criteria if item["weight"] < 0)
    return (raw - low) / (high - low)


@dataclass
class Scored:
    """One completion's judgement: its reward in [0, 1] (None: unparsable) and what the judge said."""

    reward: float | None
    scores: list[float] | None
    raw: str


Job = tuple[list[dict[str, str]], str, list[dict[str, Any]]]


def score_yes_no(backend: Backend, jobs: Sequence[Job], *, progress: bool = False) -> list[Scored]:
    """Every (response, criterion) question of ``jobs`` in one ``choice_logprobs`` call; a job's
    scores are ``s_i = 2 P(Yes) / (P(Yes) + P(No))``, None (masked) if any criterion got neither token."""
    questions = [yes_no_conversation(messages, response, item["criterion"])
                 for messages, response, criteria in jobs for item in criteria]
    logprobs = iter(backend.choice_logprobs(questions, list(YES_NO), "", progress=progress) if questions else [])
    out = []
    for _, _, criteria in jobs:
        each = [yes_no_score(next(logprobs)) for _ in criteria]
        scores = None if any(s is None for s in each) else [float(s) for s in each if s is not None]
        raw = " ".join("-" if s is None else f"{s / 2:.3f}" for s in each)
        out.append(Scored(criteria_reward(criteria, scores), scores, f"P(yes): {raw}"))
    return out


class GroupScorer:
    """``judge:auto``'s ``score(criteria, messages, completions) -> [reward or None]``: `score_yes_no` on
    one prompt's group. ``per_criterion`` gives the 0-2 scores ``[c][j]`` (the writer's spread check)
    from the same judge call, which the reward of the same group then reuses."""

    def __init__(self, backend: Callable[[], Backend]) -> None:
        self.backend = backend
        self._last: tuple[str, list[list[float | None]], list[float | None]] | None = None

    def _scored(self, criteria: Sequence[dict[str, Any]], messages: list[dict[str, str]],
                completions: Sequence[str]) -> tuple[list[list[float | None]], list[float | None]]:
        key = json.dumps([list(criteria), messages, list(completions)], sort_keys=True)
        if self._last is None or self._last[0] != key:
            scored = score_yes_no(self.backend(), [(messages, text, list(criteria)) for text in completions])
            matrix = [[None if s.scores is None else s.scores[c] for s in scored] for c in range(len(criteria))]
            self._last = (key, matrix, [s.reward for s in scored])
        return self._last[1], self._last[2]

    def per_criterion(self, criteria: Sequence[dict[str, Any]], messages: list[dict[str, str]],
                      completions: Sequence[str]) -> list[list[float | None]]:
        return self._scored(criteria, messages, completions)[0]

    def __call__(self, criteria: Sequence[dict[str, Any]], messages: list[dict[str, str]],
                 completions: Sequence[str]) -> list[float | None]:
        return self._scored(criteria, messages, completions)[1]


def score_criteria(backend: Backend, jobs: Sequence[Job], *, seed: int, keys: Sequence[str] | None = None,
                   progress: bool = False, scoring: str = SCORINGS[0]) -> list[Scored]:
    """Judge each ``(messages, response, criteria)`` in one engine call: ``yes_no`` (`score_yes_no`) or
    ``lines`` (greedy, one reply each; ``keys`` name the jobs for their seeds, so a job's reply does
    not depend on its batch)."""
    if not jobs:
        return []
    if scoring == "yes_no":
        return score_yes_no(backend, jobs, progress=progress)
    longest = max(len(criteria) for _, _, criteria in jobs)
    params = SamplingParams(n=1, temperature=0.0, max_tokens=8 + TOKENS_PER_CRITERION * longest, seed=seed)
    seeds = [stable_seed(seed, "criteria", key) for key in (keys or [str(i) for i in range(len(jobs))])]
    generations = backend.chat([criteria_conversation(*job) for job in jobs], params, seeds=seeds, progress=progress)
    out = []
    for (_, _, criteria), generation in zip(jobs, generations):
        text = generation.completions[0].text
        scores = parse_answer(text, len(criteria))
        out.append(Scored(criteria_reward(criteria, scores), scores, text))
    return out


# ---------------------------------------------------------------------------------------------
# `rlaif run --rubric criteria:FIELD`: a rubric-like object the data pipeline judges with

def is_criteria_spec(name: str) -> bool:
    return str(name).startswith(SPEC_PREFIX)


class CriteriaMethod:
    """The ``criteria`` judge method as `rlaif.judging.judge.judge_items` drives it."""

    name = "criteria"
    needs_judge = True
    pairwise = False
    scores_reply = False

    def requests(self, rubric: CriteriaRubric, item: JudgeItem, item_index: int, seed: int) -> list[Request]:
        criteria = rubric.criteria_of(item)
        return [Request(item_index, index, None, criteria_conversation(item.messages, response, criteria))
                for index, response in enumerate(item.responses)]

    def score(self, backend: Backend | None, rubric: CriteriaRubric, items: Sequence[JudgeItem],
              requests: list[Request], rows: list[dict[str, Any]], *, seed: int, verdict_retries: int,
              progress: bool) -> None:
        """One greedy reply per response; an unparsable one is a failed score (None)."""
        assert backend is not None
        jobs = [(items[r.item].messages, items[r.item].responses[r.i], rubric.criteria_of(items[r.item]))
                for r in requests]
        keys = [f"{items[r.item].id}:{r.i}" for r in requests]
        results = score_criteria(backend, jobs, seed=seed, keys=keys, progress=progress, scoring=rubric.scoring)
        for request, scored in zip(requests, results):
            row = rows[request.item]
            row["scores"][request.i] = scored.reward
            row["details"][request.i] = {"raw": scored.raw, "criteria_scores": scored.scores}
            if scored.reward is None:
                row["details"][request.i]["error"] = ("no probability on Yes or No for some criterion"
                                                      if rubric.scoring == "yes_no" else
                                                      "the judge's answer does not score every criterion 0-2")
                row["failures"] += 1


@dataclass
class CriteriaRubric:
    """``criteria:FIELD``: each item's own criteria, read from its prompt row's ``FIELD`` (candidates
    keep the prompt row's fields as ``metadata``); scores in [0, 1]."""

    field: str
    scoring: str = SCORINGS[0]
    template: str = ""
    path: None = None
    assistant_prefix: str = ""
    method: str = "criteria"
    scale_range: list[int] = field(default_factory=lambda: [0, 1])
    needs_judge: bool = True
    judge_method: CriteriaMethod = field(default_factory=CriteriaMethod)

    @property
    def name(self) -> str:
        return SPEC_PREFIX + self.field + ("" if self.scoring == SCORINGS[0] else ":" + self.scoring)

    def criteria_of(self, item: JudgeItem) -> list[dict[str, Any]]:
        return parse_criteria((item.metadata or {}).get(self.field), f"item '{item.id}'", self.field)

    def select_principles(self, key: str, seed: int) -> list[str]:
        return []


def criteria_rubric(spec: str) -> CriteriaRubric:
    """``criteria:FIELD[:SCORING]`` as a rubric; the field name must be given."""
    try:
        name, scoring = split_target(spec[len(SPEC_PREFIX):])
    except UserError as e:
        raise UserError(f"rubric {e}") from None
    if not name:
        raise UserError(f"rubric '{spec}': give the prompt file's field holding the criteria (criteria:FIELD)")
    return CriteriaRubric(name, scoring)
