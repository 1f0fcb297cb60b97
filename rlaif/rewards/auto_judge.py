"""``judge:auto``: per-prompt criteria written by the judge from the group's rollouts, cached, saved.

For each prompt of a step (the k completions with the same ``id`` form its group), the criteria come
from `CriteriaCache`: the ones in memory, else ``OUT/rubrics/<id>.criteria.json`` (a resumed run
reuses them), else, or when older than ``auto_rubric_refresh`` steps, the judge writes new ones from
this group (`rlaif.judging.criteria_writer`), which are linted and saved. A file a person edited
(``"edited_by": "person"``, as the studio saves it) always wins and is never rewritten. The group is
then scored by ``score(criteria, messages, completions) -> [float | None]`` (pluggable; by default
`rlaif.judging.criteria.GroupScorer`, the Yes/No scoring of ``rubrics:FIELD``). A prompt without
usable criteria gets None rewards (masked, counted in ``failures``, one warning line). Right after writing, each criterion is scored
alone once: one that gives the whole group the same score is saved with a lint warning (it does not
discriminate).

A saved file::

    {"prompt_id": "p1", "step": 11, "edited_by": "judge", "judge": "vllm:...", "attempts": 1,
     "criteria": [{"criterion": "...", "weight": 2.0}, ...],      # null when no usable rubric
     "lint": ["criterion 2: warning: does not discriminate ..."], "raw": "the judge's answer",
     "prompt": "the user's request"}

``step`` is the 1-based step it was written at (as in rollouts.jsonl); the trainer tells the source
its step through `AutoJudgeReward.at_step` (without it, each call counts as one step).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from rlaif.errors import UserError
from rlaif.judging.criteria_lint import CRITERIA_SUFFIX
from rlaif.rewards.base import Reward

Score = Callable[[Sequence[dict[str, Any]], list[dict[str, str]], Sequence[str]], list[float | None]]
RUBRICS_DIR = "rubrics"  # OUT/rubrics/, listed in the out-folder marker


def file_name(prompt_id: str) -> str:
    """A safe file name for a prompt id (odd characters replaced; then a short hash keeps names distinct)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", prompt_id)[:80].lstrip(".") or "_"
    if safe != prompt_id:
        safe += "-" + hashlib.sha256(prompt_id.encode()).hexdigest()[:8]
    return safe + CRITERIA_SUFFIX


class CriteriaCache:
    """Criteria per prompt id, in memory and (with ``folder``) one JSON file each; see the module docstring."""

    def __init__(self, folder: Path | None, refresh: int) -> None:
        self.folder, self.refresh = folder, refresh
        self.entries: dict[str, dict[str, Any]] = {}

    def path(self, prompt_id: str) -> Path | None:
        return None if self.folder is None else self.folder / file_name(prompt_id)

    def _read(self, prompt_id: str) -> dict[str, Any] | None:
        from rlaif.judging.criteria_lint import lint_criteria_text

        path = self.path(prompt_id)
        if path is None or not path.is_file():
            return None
        data, found = lint_criteria_text(path.read_text(encoding="utf-8"))
        person = isinstance(data, dict) and data.get("edited_by") == "person"
        errors = [(line, f) for line, f in found if f.level == "error"]
        if person and errors:  # a person's file is theirs: say what is wrong rather than overwrite it
            line, finding = errors[0]
            raise UserError(f"{path}:{line}: {finding}")
        if data is None or errors or data.get("prompt_id") != prompt_id:
            return None  # a judge's file that no longer reads: written again
        return data

    def get(self, prompt_id: str, step: int) -> dict[str, Any] | None:
        """The prompt's criteria entry if usable at 1-based ``step``: a person's, or a judge's written
        fewer than ``refresh`` steps ago (refresh 0: never refreshed); None when absent or stale."""
        entry = self.entries.get(prompt_id)
        if entry is None or entry.get("edited_by") == "person" or self._stale(entry, step):
            entry = self._read(prompt_id) or entry  # a person may have edited the file while training runs
            if entry is not None:
                self.entries[prompt_id] = entry
        if entry is None or self._stale(entry, step):
            return None
        return entry

    def _stale(self, entry: dict[str, Any], step: int) -> bool:
        if entry.get("edited_by") == "person":
            return False
        return entry.get("criteria") is None or bool(self.refresh and step - int(entry.get("step", 0)) >= self.refresh)

    def _persons(self, prompt_id: str) -> bool:
        path = self.path(prompt_id)
        try:
            return path is not None and json.loads(path.read_text(encoding="utf-8")).get("edited_by") == "person"
        except (OSError, ValueError, AttributeError):
            return False

    def put(self, entry: dict[str, Any]) -> None:
        """Keep ``entry`` and save it (listed in the out-folder marker before the folder is made)."""
        from rlaif.io.outdir import claim
        from rlaif.io.store import atomic_write_text

        path = self.path(entry["prompt_id"])
        if self._persons(entry["prompt_id"]):
            return  # never over a person's edit
        self.entries[entry["prompt_id"]] = entry
        if path is None:
            return
        assert self.folder is not None
        claim(self.folder.parent, self.folder.name)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(entry, indent=2, ensure_ascii=False) + "\n")


class AutoJudgeReward:
    """``judge:auto``: see the module docstring. ``backend`` gives the judge engine; ``score`` the scorer."""

    def __init__(self, spec: str, backend: Callable[[], Any], score: Score, *, seed: int, out: str | Path | None,
                 refresh: int = 10, retries: int = 2, template: str | None = None,
                 close: Callable[[], None] | None = None) -> None:
        from rlaif.judging.criteria_writer import WriterTemplate

        self.name, self.backend, self.score, self.seed, self.retries = spec, backend, score, seed, retries
        self.template = WriterTemplate.load(template)
        self.cache = CriteriaCache(Path(out) / RUBRICS_DIR if out else None, refresh)
        self._close = close
        self.step: int | None = None  # 0-based, set by the trainer (`at_step`)
        self.calls = 0
        self.failures = 0  # completions masked for want of usable criteria
        self.written = 0  # criteria lists the judge wrote (usable or not)

    def at_step(self, step: int) -> None:
        """The trainer's 0-based step of the next call."""
        self.step = step

    def __call__(self, prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[Reward]:
        from rlaif.rewards.judge import group_items

        step = (self.step if self.step is not None else self.calls) + 1
        self.calls += 1
        groups = group_items(prompts, completions, rows)
        stale: dict[str, Any] = {}
        for item, _ in groups:
            if item.id not in stale and self.cache.get(item.id, step) is None:
                stale[item.id] = item
        if stale:
            self._write(list(stale.values()), step)
        rewards: list[Reward] = [None] * len(completions)
        for item, indices in groups:
            entry = self.cache.get(item.id, step) or self.cache.entries.get(item.id) or {}
            criteria = entry.get("criteria")
            if not criteria:
                self.failures += len(indices)
                continue
            for index, value in zip(indices, self.score(criteria, item.messages, item.responses)):
                rewards[index] = value
        return rewards

    def _write(self, items: list[Any], step: int) -> None:
        from rlaif.io.seeds import stable_seed
        from rlaif.judging.criteria_lint import spread_warnings
        from rlaif.judging.criteria_writer import write_criteria
        from rlaif.judging.templates import last_user_message

        backend = self.backend()
        written = write_criteria(backend, self.template, [(item.id, item.messages, item.responses) for item in items],
                                 seed=stable_seed(self.seed, "auto", step), retries=self.retries)
        for item, result in zip(items, written):
            self.written += 1
            findings = list(result.findings)
            if result.criteria:
                findings += spread_warnings(result.criteria, self._each(result.criteria, item))
            else:
                old = self.cache.entries.get(item.id)
                keep = old is not None and old.get("criteria")
                print(f"warning: judge:auto: no usable criteria for prompt {item.id!r} after {result.attempts} "
                      f"attempt(s) ({result.error}); " + (f"kept those of step {old['step']}" if keep else
                      f"its {len(item.responses)} completions are masked"), file=sys.stderr, flush=True)
                if keep:
                    continue
            self.cache.put({"prompt_id": item.id, "step": step, "edited_by": "judge",
                            "judge": getattr(backend, "model_id", ""), "attempts": result.attempts,
                            "criteria": result.criteria, "lint": [str(f) for f in findings],
                            "error": result.error, "raw": result.raw, "prompt": last_user_message(item.messages)})

    def _each(self, criteria: list[dict[str, Any]], item: Any) -> list[list[float | None]]:
        """Each criterion's scores on the group alone (the scorer's ``per_criterion`` if it has one)."""
        each = getattr(self.score, "per_criterion", None)
        if each is not None:
            return each(criteria, item.messages, item.responses)
        return [self.score([c], item.messages, item.responses) for c in criteria]

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


def load_auto_judge(spec: str, judge: Any, *, seed: int, out: str | Path | None, refresh: int = 10, retries: int = 2,
                    template: str | None = None, score: Score | None = None) -> AutoJudgeReward:
    """``judge:auto`` on the shared judge engine (`rlaif.rewards.judge.SharedJudge`), scored by ``score``
    or by `rlaif.judging.criteria.GroupScorer` (Yes/No per criterion, as ``rubrics:FIELD``)."""
    from rlaif.judging.criteria import GroupScorer

    return AutoJudgeReward(spec, judge.get, score or GroupScorer(judge.get), seed=seed, out=out,
                           refresh=refresh, retries=retries, template=template, close=judge.close)
