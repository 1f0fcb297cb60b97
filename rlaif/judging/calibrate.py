"""`rlaif rubric calibrate`: how well does a judge + rubric agree with labelled pairs?

Each example is (prompt, response_a, response_b, better), read from a rubric's ``examples:`` or
a file (`read_examples`: YAML/JSONL rows of that shape, or labelled-set rows ``{prompt, better,
worse, fault}`` with the responses as text). The rubric judges both responses of an example as one
item; the judge *agrees* when the better response gets the higher score (score
methods) or a preference p > 0.5 (pairwise, p averaged over both orders). Reported:

- agreement with the labels (ties count as disagreement) and, pairwise, the agreement a naive
  one-order judge would have had (first order only) and position consistency (both orders
  prefer the same response);
- verbosity bias: Pearson and Spearman correlation of score with response length (characters),
  and how often the judge prefers the longer response vs how often the labels do;
- the worst disagreements (largest margin in the wrong direction);
- the same figures per fault kind, when every example names one (``fault``; or ``note`` when
  notes repeat: at most one distinct note per two examples);
- the judge's noise margin (`noise_margin`): the largest margin t of normalised scores (the
  [0, 1] scale of `rlaif build`'s ``min_margin``) such that the labelled pairs whose judge margin
  is below t (ties left out) agree with the labels no better than chance: their Wilson 95%
  interval contains 1/2, with at least `NOISE_MIN_PAIRS` pairs; t on the grid 0.005, 0.010, ..., 0.3.
  ``min_margin`` = t drops exactly the pairs where the judge is indistinguishable from a coin.
  `rlaif review report` applies the same function to a person's labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from rlaif.errors import UserError, where
from rlaif.io.records import as_messages, iter_jsonl, read_text
from rlaif.io.review_files import item_verdicts, latest_labels, read_items, read_labels
from rlaif.io.yaml_lines import key_lines, line_of
from rlaif.judging.judge import JudgeItem, judge_items
from rlaif.judging.methods import METHODS
from rlaif.judging.rubrics import CalibrationExample, Rubric
from rlaif.judging.validation import rubric_schema

LOW_AGREEMENT = 0.75
Z95 = 1.959963984540054  # two-sided 95% normal quantile
NOISE_GRID = tuple(round(0.005 * k, 3) for k in range(1, 61))  # 0.005 .. 0.3
NOISE_MIN_PAIRS = 10
# a labelled-set row: the responses as text, which one is better is implied by the key
TRIPLE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["prompt", "better", "worse"],
    "properties": {"id": {"type": "string"}, "prompt": {"type": "string", "minLength": 1},
                   "better": {"type": "string"}, "worse": {"type": "string"},
                   "fault": {"type": "string", "minLength": 1}, "note": {"type": "string"}}}


@dataclass
class LabelledExample(CalibrationExample):
    """A calibration example that names the kind of fault the worse response has."""

    fault: str = ""


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Sample Pearson correlation; None when undefined (fewer than 2 points or zero variance)."""
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion k/n (Wilson 1927); ``n`` may be an effective, non-integer
    sample size. None for n <= 0."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def noise_margin(margins: Sequence[float | None], grid: Sequence[float] = NOISE_GRID,
                 min_pairs: int = NOISE_MIN_PAIRS) -> float | None:
    """The noise margin of the module docstring from signed normalised margins (> 0: the judge preferred
    the labelled-better response; 0 or None: tie or failed, left out). 0.0 when the judge beats chance
    at every margin with enough pairs; None when fewer than ``min_pairs`` untied pairs (not measurable)."""
    untied = [m for m in margins if m is not None and m != 0]
    if len(untied) < min_pairs:
        return None
    found = 0.0
    for t in grid:
        inside = [m for m in untied if abs(m) < t]
        if len(inside) < min_pairs:
            continue
        low, high = wilson(sum(m > 0 for m in inside), len(inside))  # type: ignore[misc]
        if low <= 0.5 <= high:
            found = t
    return found


def normalised_margin(o: "Outcome") -> float | None:
    """score(better) - score(worse) on the judgement's scale mapped to [0, 1] (build's margin scale)."""
    if o.score_a is None or o.score_b is None:
        return None
    lo, hi = (o.judgement.get("scale") or [0.0, 1.0])[:2]
    span = float(hi) - float(lo) or 1.0
    diff = (o.score_a - o.score_b) / span
    return diff if o.example.better == "a" else -diff


def ranks(x: Sequence[float]) -> list[float]:
    """1-based ranks, ties get their average rank."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    out = [0.0] * len(x)
    k = 0
    while k < len(order):
        m = k
        while m + 1 < len(order) and x[order[m + 1]] == x[order[k]]:
            m += 1
        for t in range(k, m + 1):
            out[order[t]] = (k + m) / 2 + 1
        k = m + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho = Pearson correlation of the (tie-averaged) ranks."""
    return pearson(ranks(x), ranks(y))


@dataclass
class Outcome:
    example: CalibrationExample
    score_a: float | None
    score_b: float | None
    margin: float | None  # score(better) - score(worse); pairwise: p(better) - 0.5
    agrees: bool
    first_order_agrees: bool | None = None
    consistent: bool | None = None
    judgement: dict[str, Any] = field(default_factory=dict)


@dataclass
class CalibrationReport:
    rubric: str
    method: str
    judge: str
    outcomes: list[Outcome]
    length_pearson: float | None
    length_spearman: float | None
    judge_prefers_longer: float | None
    labels_prefer_longer: float

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def agreement(self) -> float:
        return sum(o.agrees for o in self.outcomes) / max(1, self.n)

    @property
    def failures(self) -> int:
        return sum(o.margin is None for o in self.outcomes)

    @property
    def position_consistency(self) -> float | None:
        vals = [o.consistent for o in self.outcomes if o.consistent is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def first_order_agreement(self) -> float | None:
        vals = [o.first_order_agrees for o in self.outcomes if o.first_order_agrees is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def noise_margin(self) -> float | None:
        return noise_margin([normalised_margin(o) for o in self.outcomes])

    def by_fault(self) -> dict[str, "CalibrationReport"]:
        """One sub-report per fault kind (see `fault_kinds`), in order of first appearance; {} if none."""
        kinds = fault_kinds([o.example for o in self.outcomes])
        if kinds is None:
            return {}
        groups: dict[str, list[Outcome]] = {}
        for kind, o in zip(kinds, self.outcomes):
            groups.setdefault(kind, []).append(o)
        return {k: CalibrationReport(self.rubric, self.method, self.judge, v, None, None, None, 0.0)
                for k, v in groups.items()}

    def metrics(self) -> dict[str, Any]:
        """The headline figures as JSON-ready numbers (also per fault kind)."""
        out: dict[str, Any] = {"n": self.n, "agreement": self.agreement, "failures": self.failures,
                               "position_consistency": self.position_consistency,
                               "first_order_agreement": self.first_order_agreement}
        out["margins"] = [o.margin for o in self.outcomes]
        out["noise_margin"] = self.noise_margin
        faults = self.by_fault()
        if faults:
            out["by_fault"] = {k: {"n": r.n, "agreement": r.agreement, "position_consistency":
                                   r.position_consistency} for k, r in faults.items()}
        return out


def fault_kinds(examples: Sequence[CalibrationExample]) -> list[str] | None:
    """Each example's fault kind: its ``fault``; else its ``note`` when notes repeat (at most one
    distinct note per two examples, so free-text notes do not make one group per example); else None."""
    faults = [getattr(ex, "fault", "") for ex in examples]
    if examples and all(faults):
        return faults
    notes = [ex.note for ex in examples]
    if examples and all(notes) and 2 * len(set(notes)) <= len(notes):
        return notes
    return None


def calibrate(backend: Any | None, rubric: Rubric, examples: Sequence[CalibrationExample], *, seed: int = 0,
              verdict_retries: int = 2, progress: bool = True) -> CalibrationReport:
    """Judge every example (one batched call) and compare with its label (``backend``: None for rules)."""
    items = [JudgeItem(ex.id or f"example-{k}", as_messages(ex.prompt),
                       [ex.response_a, ex.response_b]) for k, ex in enumerate(examples)]
    rows = judge_items(backend, rubric, items, seed=seed, verdict_retries=verdict_retries, progress=progress)
    pairwise = rubric.judge_method.pairwise
    outcomes, lengths, scores = [], [], []
    for ex, row in zip(examples, rows):
        sa, sb = row["scores"]
        good = 0 if ex.better == "a" else 1
        margin = None if sa is None or sb is None else (
            (row["comparisons"][0]["p"] if good == 0 else 1 - row["comparisons"][0]["p"]) - 0.5
            if pairwise else (sa - sb if good == 0 else sb - sa))
        o = Outcome(ex, sa, sb, margin, agrees=margin is not None and margin > 0, judgement=row)
        if pairwise and row["comparisons"] and row["comparisons"][0]["p"] is not None:
            c = row["comparisons"][0]  # i=0 (response a), j=1
            p_first_good = c["p_i_first"] if good == 0 else 1 - c["p_i_first"]
            o.first_order_agrees, o.consistent = p_first_good > 0.5, c["consistent"]
        outcomes.append(o)
        for s, text in ((sa, ex.response_a), (sb, ex.response_b)):
            if s is not None:
                scores.append(s)
                lengths.append(float(len(text)))
    judged = [o for o in outcomes if o.margin is not None and len(o.example.response_a) != len(o.example.response_b)]
    longer_wins = [((o.score_a or 0) > (o.score_b or 0)) == (len(o.example.response_a) > len(o.example.response_b))
                   for o in judged if o.score_a != o.score_b]
    labelled = [(ex.better == "a") == (len(ex.response_a) > len(ex.response_b))
                for ex in examples if len(ex.response_a) != len(ex.response_b)]
    return CalibrationReport(
        rubric=rubric.name, method=rubric.method, outcomes=outcomes,
        judge=backend.model_id if rubric.needs_judge and backend is not None else "rules (no judge model)",
        length_pearson=pearson(lengths, scores), length_spearman=spearman(lengths, scores),
        judge_prefers_longer=sum(longer_wins) / len(longer_wins) if longer_wins else None,
        labels_prefer_longer=sum(labelled) / len(labelled) if labelled else 0.0)


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.0f}%" if pct else f"{x:+.2f}"


def _short(text: str | list[dict[str, str]], n: int = 70) -> str:
    if not isinstance(text, str):  # a chat prompt (from a review's items)
        text = " / ".join(m["content"] for m in text)
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def format_report(r: CalibrationReport, worst: int = 3) -> str:
    agree = sum(o.agrees for o in r.outcomes)
    pairwise = METHODS[r.method].pairwise
    lines = [f"rubric {r.rubric} ({r.method}), judge {r.judge}, {r.n} labelled pairs",
             f"agreement with labels:  {agree}/{r.n} = {_fmt(r.agreement, True)}"
             + (f"  ({r.failures} failed judgements count as disagreement)" if r.failures else "")]
    if pairwise:
        lines.append(f"position consistency:   {_fmt(r.position_consistency, True)} of pairs prefer the same "
                     f"response in both orders")
        lines.append(f"one-order agreement:    {_fmt(r.first_order_agreement, True)} (what asking in one order "
                     f"only would give)")
    else:
        lines.append("position consistency:   n/a (each response is scored on its own)")
    lines.append(f"verbosity bias:         corr(score, length) Pearson {_fmt(r.length_pearson)}, "
                 f"Spearman {_fmt(r.length_spearman)}; judge prefers the longer response in "
                 f"{_fmt(r.judge_prefers_longer, True)} of pairs, labels in {_fmt(r.labels_prefer_longer, True)}")
    noise = r.noise_margin
    lines.append("noise margin:           " + (
        f"n/a (fewer than {NOISE_MIN_PAIRS} untied pairs)" if noise is None else
        "0 (better than chance at every margin with enough pairs)" if noise == 0 else
        f"{noise:g} (pairs with a normalised margin below it agree no better than chance; min_margin={noise:g} "
        f"drops them)"))
    faults = r.by_fault()
    if faults:
        width = max(len(k) for k in faults)
        head = f"  {'fault':<{width}}  {'n':>3}  agreement" + ("  consistency" if pairwise else "")
        lines += ["per fault kind:", head]
        for kind, sub in faults.items():
            agree_k = sum(o.agrees for o in sub.outcomes)
            cons = f"  {_fmt(sub.position_consistency, True):>11}" if pairwise else ""
            lines.append(f"  {kind:<{width}}  {sub.n:>3}  {agree_k:>3}/{sub.n:<3} {_fmt(sub.agreement, True):>4}{cons}")
    wrong = sorted((o for o in r.outcomes if not o.agrees),  # most confidently wrong first
                   key=lambda o: math.inf if o.margin is None else o.margin)[:worst]
    if wrong:
        lines.append(f"worst disagreements ({len(wrong)} of {r.n - agree}):")
        for o in wrong:
            ex = o.example
            score = lambda s: "failed" if s is None else f"{s:.2f}"  # noqa: E731
            why = getattr(ex, "fault", "") or ex.note
            lines.append(f"  [{ex.id}] {_short(ex.prompt, 60)}  label: {ex.better}" + (f" ({why})" if why else ""))
            lines.append(f"     a={score(o.score_a)}  {_short(ex.response_a)}")
            lines.append(f"     b={score(o.score_b)}  {_short(ex.response_b)}")
    if r.agreement < LOW_AGREEMENT:
        lines.append(f"WARNING: agreement {_fmt(r.agreement, True)} is low: judge {r.judge} cannot be trusted with "
                     f"this rubric; its preferences would add label noise. Use a larger judge (judge.model=..., "
                     f"or judge.engine=openai) or simplify the rubric, then calibrate again.")
    return "\n".join(lines)


def read_examples(path: str | Path) -> list[CalibrationExample]:
    """Labelled pairs from a YAML file (a list, or a mapping with ``examples:``) or JSONL.

    A labels file of `rlaif review` (``DIR/review/labels.jsonl``) gives the reviewed items
    (`review_examples`). A row is either a rubric example (prompt, response_a, response_b, better: a|b,
    optional id, note, fault) or a labelled-set triple (prompt, better, worse as text, optional id, fault,
    note). Triples alternate which position the better response takes (row 0: a, row 1: b, ...),
    so a judge that always prefers one position scores 50%, not 100%.
    """
    import jsonschema

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: examples file not found")
    if is_labels_file(path):
        return review_examples(path)
    rows = list(iter_jsonl(path)) if path.suffix == ".jsonl" else _yaml_rows(path)
    if not rows:
        raise UserError(f"{path}: no examples")
    pair_check = jsonschema.Draft202012Validator(rubric_schema()["$defs"]["example"])
    triple_check = jsonschema.Draft202012Validator(TRIPLE_SCHEMA)
    out: list[CalibrationExample] = []
    for k, (line, ex) in enumerate(rows):
        if not isinstance(ex, dict):
            raise UserError(f"{where(path, line)}expected a mapping (prompt, better, worse | response_a, ...)")
        triple = "worse" in ex
        fault = ex.get("fault", "")
        if not isinstance(fault, str):
            raise UserError(f"{where(path, line, 'fault')}expected a string")
        rest = ex if triple else {key: v for key, v in ex.items() if key != "fault"}
        err = next(iter((triple_check if triple else pair_check).iter_errors(rest)), None)
        if err is not None:
            fld = ".".join(map(str, err.absolute_path)) or None
            raise UserError(f"{where(path, line, fld)}{err.message}")
        fields = {"id": f"{path.stem}-{k}", **rest, "fault": fault}
        if triple:
            good, bad = fields.pop("better"), fields.pop("worse")
            a_first = len(out) % 2 == 0
            fields.update(response_a=good if a_first else bad, response_b=bad if a_first else good,
                          better="a" if a_first else "b")
        out.append(LabelledExample(**fields))
    return out


def is_labels_file(path: Path) -> bool:
    """A review's labels file: named labels.jsonl beside items.jsonl, or whose first row is an answer."""
    if path.name == "labels.jsonl" and (path.parent / "items.jsonl").is_file():
        return True
    if path.suffix != ".jsonl":
        return False
    first = next(iter(iter_jsonl(path)), (None, None))[1]
    return isinstance(first, dict) and {"item", "reviewer", "answer"} <= set(first)


def review_examples(path: Path) -> list[CalibrationExample]:
    """Calibration examples from a review: one per item whose reviewers preferred a response (strict
    majority of A/B/tie/both-bad answers; ties, both bad, skips and split items left out), with the prompt
    and the two responses from the sibling items.jsonl, in the order the person saw them."""
    items_path = path.parent / "items.jsonl"
    if not items_path.is_file():
        raise UserError(f"{path}: a review's labels need their items.jsonl beside them ({items_path} not found)")
    items = {item["item"]: item for item in read_items(items_path)}
    out: list[CalibrationExample] = []
    for item_id, verdict in item_verdicts(latest_labels(read_labels(path))).items():
        item = items.get(item_id)
        if item is None or not isinstance(verdict, int):
            continue
        text = dict(zip(item["candidates"], item["responses"]))
        first, second = item.get("show") or item["candidates"]
        prompt = item["prompt"]
        single = len(prompt) == 1 and prompt[0].get("role") == "user"
        out.append(LabelledExample(prompt=prompt[0]["content"] if single else prompt, id=item_id,
                                   response_a=text[first], response_b=text[second],
                                   better="a" if verdict == first else "b"))
    if not out:
        raise UserError(f"{path}: no item with an A/B verdict to calibrate on (ties, both bad and skips are left out)")
    return out


def _yaml_rows(path: Path) -> list[tuple[int | None, Any]]:
    """(line, example) for each item of a YAML list (or of its ``examples:`` mapping key)."""
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UserError(f"{where(path, mark.line + 1 if mark else None)}invalid YAML") from None
    key: tuple[Any, ...] = ()
    if isinstance(data, dict) and "examples" in data:
        data, key = data["examples"], ("examples",)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of examples (prompt, response_a, response_b, better)")
    lines = key_lines(text)
    return [(line_of(lines, key + (k,)), ex) for k, ex in enumerate(data)]
