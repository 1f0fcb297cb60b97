"""Lint of per-prompt criteria: a list of ``{"criterion": str, "weight": float}`` (negative weight = a
pitfall), as the judge writes them for ``judge:auto`` or a person edits them.

Errors (the criterion is dropped, or the list rewritten): empty or over-long text, a zero or
non-finite weight, a duplicate, a mirrored pair (a criterion and its negation, as open-instruct's
rubric prompt forbids: "Provides clear explanations" beside "Lacks clear explanations"), and a count
outside 1-5. Warning, once the criteria are scored: a criterion that gives every rollout of the group
the same score does not discriminate (open-instruct deactivates rubrics of zero score std).

Mirrored pairs: each text is reduced to its content words (lower case, negation words and filler
verbs such as "provides"/"includes" removed, a final "s" cut); two criteria with the same content words (Jaccard
overlap >= `MIRROR_OVERLAP`) are mirrored when exactly one is negated or their weights differ in sign,
and duplicates otherwise.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Sequence

MIN_CRITERIA, MAX_CRITERIA = 1, 5
CRITERIA_SUFFIX = ".criteria.json"  # a saved criteria file: OUT/rubrics/<prompt id>.criteria.json
MAX_CRITERION_CHARS = 300
MIRROR_OVERLAP = 0.8
NEGATIONS = frozenset("not no never without lacks lack lacking missing fails fail failing avoid avoids avoiding omits "
                      "omit neglects neglect none nor cannot".split())
FILLER = frozenset("the a an response answer it its is are be being does do doesn don isn aren t s to of and or "
                   "that this which provides provide gives give has have includes include contains contain uses "
                   "use shows show offers offer makes make any".split())


@dataclass
class CriterionFinding:
    """One lint finding; ``index``: the criterion it is about (None: the list as a whole)."""

    index: int | None
    message: str
    level: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = "criteria" if self.index is None else f"criterion {self.index + 1}"
        return f"{where}: {'warning: ' if self.level == 'warning' else ''}{self.message}"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("n't", " not"))


def content_words(text: str) -> tuple[frozenset[str], bool]:
    """(content words, negated?) of a criterion: negation and filler words removed."""
    words = _words(text)
    negated = sum(w in NEGATIONS for w in words) % 2 == 1  # "does not fail to" is not negated
    return frozenset(_stem(w) for w in words if w not in NEGATIONS and w not in FILLER), negated


def _stem(word: str) -> str:
    """A plural or third-person 's' off ("repeats" = "repeat"), enough to match a criterion's mirror."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def weight_error(weight: Any) -> str | None:
    """Why ``weight`` is no criterion weight (not a real number, not finite, or 0), or None; the one
    check of a weight, shared by the lint and `rlaif.judging.criteria.parse_criteria`."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        return f"weight {weight!r} is not a number"
    if not math.isfinite(weight):
        return f"weight {weight} is not finite"
    if weight == 0:
        return "weight 0: a criterion must count (positive) or be a pitfall (negative)"
    return None


def lint_criteria(criteria: Sequence[Any]) -> list[CriterionFinding]:
    """Every finding for a criteria list (see the module docstring); the later one of a pair is flagged."""
    out: list[CriterionFinding] = []
    if not MIN_CRITERIA <= len(criteria) <= MAX_CRITERIA:
        out.append(CriterionFinding(None, f"{len(criteria)} criteria; give {MIN_CRITERIA}-{MAX_CRITERIA}"))
    seen: list[tuple[int, str, frozenset[str], bool, float]] = []
    for index, item in enumerate(criteria):
        if not isinstance(item, dict) or not isinstance(item.get("criterion"), str):
            out.append(CriterionFinding(index, "not an object with a 'criterion' text and a 'weight'"))
            continue
        text, weight = item["criterion"].strip(), item.get("weight")
        if not text:
            out.append(CriterionFinding(index, "empty criterion text"))
            continue
        if len(text) > MAX_CRITERION_CHARS:
            out.append(CriterionFinding(index, f"{len(text)} characters; keep a criterion under "
                                               f"{MAX_CRITERION_CHARS}"))
        why = weight_error(weight)
        if why:
            out.append(CriterionFinding(index, why))
            continue
        words, negated = content_words(text)
        norm = " ".join(_words(text))
        for other, other_norm, other_words, other_negated, other_weight in seen:
            if norm != other_norm and _overlap(words, other_words) < MIRROR_OVERLAP:
                continue
            if negated != other_negated or (weight > 0) != (other_weight > 0):
                out.append(CriterionFinding(index, f"mirrors criterion {other + 1} (the same criterion negated or "
                                                   f"with the opposite sign): keep one direction"))
            else:
                out.append(CriterionFinding(index, f"duplicates criterion {other + 1}"))
            break
        else:
            seen.append((index, norm, words, negated, float(weight)))
    return out


def spread_warnings(criteria: Sequence[dict[str, Any]], scores: Sequence[Sequence[float | None]]
                    ) -> list[CriterionFinding]:
    """Warnings for criteria that gave every scored rollout the same score (``scores[c][j]``: criterion
    c on rollout j; fewer than two scored rollouts tell nothing)."""
    out = []
    for index, row in enumerate(scores):
        values = [s for s in row if s is not None]
        if len(values) >= 2 and max(values) - min(values) < 1e-9:
            out.append(CriterionFinding(index, f"does not discriminate: every rollout of the group scored "
                                               f"{values[0]:g}", "warning"))
    return out


def criteria_of(data: Any) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The criteria list of a saved criteria file's JSON data, or (None, why not)."""
    if not isinstance(data, dict):
        return None, "a criteria file holds one JSON object with a 'criteria' list"
    criteria = data.get("criteria")
    if not isinstance(criteria, list):
        return None, "field 'criteria': expected a list of {\"criterion\": text, \"weight\": number}"
    if data.get("edited_by", "judge") not in ("judge", "person"):
        return None, f"field 'edited_by': {data.get('edited_by')!r}; expected \"judge\" or \"person\""
    return criteria, None


def lint_criteria_text(text: str) -> tuple[dict[str, Any] | None, list[tuple[int | None, CriterionFinding]]]:
    """Parse and lint a criteria file's text; (its data or None, [(line, finding)]) with the line of
    each criterion's ``"criterion"`` key, for the studio."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return None, [(e.lineno, CriterionFinding(None, f"not JSON: {e.msg}"))]
    criteria, why = criteria_of(data)
    if criteria is None:
        return None, [(1, CriterionFinding(None, why or "invalid"))]
    lines = [n for n, line in enumerate(text.splitlines(), 1) if '"criterion"' in line]
    findings = lint_criteria(criteria)
    at = [(lines[f.index] if f.index is not None and f.index < len(lines) else 1, f) for f in findings]
    return data, at
