"""Figures from a review: how often people agree with the judge, and what that says about its noise.

Units. Each (reviewer, item) answer counts once, its latest row (`latest_labels`). Agreement is
measured on the A/B answers about items the judge decided (``judge.preferred`` not null): the
judge *agrees* when it prefers the candidate the person preferred. ``tie``, ``both_bad`` and
``skip`` answers, and A/B answers on items the judge left undecided, are counted apart.

Intervals (95%). Unweighted proportions: Wilson score interval. The overall agreement of a
margin-stratified sample (items with unequal ``weight``, near-noise pairs over-sampled) is the
weighted proportion ``p_w = sum w_i a_i / sum w_i`` with a Wilson interval at Kish's effective
sample size ``n_eff = (sum w_i)^2 / sum w_i^2`` (Kish 1965), so over-sampling cannot narrow it;
per stratum the weights are equal and the figures unweighted.

Position bias: the share of "A" (left) among A/B answers; the shown order is random per item, so a
person without bias answers A half of the time (0.5 = none).

Inter-reviewer agreement: Cohen's kappa ``(p_o - p_e) / (1 - p_e)`` for each pair of reviewers on
the items both answered (skip left out), over the categories first/second candidate, tie, both_bad;
``p_o`` observed agreement, ``p_e`` chance agreement from the two reviewers' marginal shares.

Noise margin: `rlaif.judging.calibrate.noise_margin` (the definition `rlaif rubric calibrate`
uses) on the judge's combined-score margins signed by the person's verdict; ``min_margin`` set to
it drops the pairs where this judge is no better than chance by this person's judgement.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any, Iterable, Sequence

from rlaif.io.review_files import DECIDED, latest_labels
from rlaif.judging.calibrate import NOISE_MIN_PAIRS, noise_margin, wilson


@dataclass
class Share:
    """k of n, its value and 95% interval (weighted: ``n_eff`` is Kish's effective n)."""

    k: float
    n: int
    value: float | None
    interval: tuple[float, float] | None
    n_eff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = list(self.interval) if self.interval else None
        return out


def share(hits: Sequence[bool]) -> Share:
    """Unweighted proportion with its Wilson interval."""
    k = sum(hits)
    return Share(k, len(hits), k / len(hits) if hits else None, wilson(k, len(hits)))


def weighted_share(hits: Sequence[bool], weights: Sequence[float]) -> Share:
    """Weighted proportion with a Wilson interval at Kish's effective n (module docstring)."""
    total = sum(weights)
    if not hits or total <= 0:
        return Share(0, len(hits), None, None, 0.0)
    p = sum(w for h, w in zip(hits, weights) if h) / total
    n_eff = total * total / sum(w * w for w in weights)
    return Share(round(p * n_eff, 6), len(hits), p, wilson(p * n_eff, n_eff), round(n_eff, 3))


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' categories on the same items; None when undefined (p_e = 1)."""
    n = len(first)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in zip(first, second)) / n
    c1, c2 = Counter(first), Counter(second)
    p_e = sum(c1[c] * c2[c] for c in c1) / (n * n)
    return None if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def category(label: dict, item: dict) -> str:
    """A non-skip answer in candidate terms (shown order cancels): first, second, tie or both_bad."""
    if label["answer"] in DECIDED:
        return "first" if label["preferred"] == item["candidates"][0] else "second"
    return label["answer"]


def judge_margin(item: dict, preferred: int) -> float | None:
    """The judge's combined-score margin signed by the person: s(preferred) - s(other); None if unscored."""
    scores = item["judge"].get("scores") or [None, None]
    i, j = item["candidates"]
    if scores[0] is None or scores[1] is None:
        return None
    s = {i: scores[0], j: scores[1]}
    other = j if preferred == i else i
    return s[preferred] - s[other]


def rubric_preferences(judgements: Iterable[dict], items: Sequence[dict]) -> dict[str, dict[str, int | None]]:
    """rubric -> item -> the candidate that rubric alone prefers (None: equal or failed), from judgements.jsonl."""
    wanted = {item["prompt_id"]: [] for item in items}
    for item in items:
        wanted[item["prompt_id"]].append(item)
    out: dict[str, dict[str, int | None]] = {}
    for row in judgements:
        for item in wanted.get(row.get("id"), []):
            i, j = item["candidates"]
            scores = row.get("scores") or []
            si = scores[i] if i < len(scores) else None
            sj = scores[j] if j < len(scores) else None
            best = None if si is None or sj is None or si == sj else (i if si > sj else j)
            out.setdefault(row["rubric"], {})[item["item"]] = best
    return out


def review_stats(items: Sequence[dict], labels: Iterable[dict], judgements: Iterable[dict] = ()) -> dict[str, Any]:
    """Every figure of the module docstring as a JSON-ready dict (labels on unknown items are counted, not used)."""
    by_id = {item["item"]: item for item in items}
    latest = latest_labels(labels)
    answers = [(reviewer, row, by_id[item]) for (reviewer, item), row in latest.items() if item in by_id]
    counts = Counter(row["answer"] for _, row, _ in answers)
    decided = [(row, item) for _, row, item in answers if row["answer"] in DECIDED]
    judged = [(row, item) for row, item in decided if item["judge"].get("preferred") is not None]
    hits = [row["preferred"] == item["judge"]["preferred"] for row, item in judged]
    weights = [float(item.get("weight", 1.0)) for _, item in judged]
    weighted = len(set(weights)) > 1
    overall = weighted_share(hits, weights) if weighted else share(hits)

    def grouped(keys: Iterable[tuple[bool, list[str]]]) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[bool]] = {}
        for hit, names in keys:
            for name in names:
                groups.setdefault(name, []).append(hit)
        return {name: share(group).to_dict() for name, group in sorted(groups.items())}

    by_stratum = grouped((hit, [item.get("stratum", "all")]) for hit, (_, item) in zip(hits, judged))
    by_flag = grouped((hit, item["judge"].get("flags") or ["none"]) for hit, (_, item) in zip(hits, judged))
    per_rubric = rubric_preferences(judgements, items)
    by_rubric = {rubric: share([row["preferred"] == prefs[item["item"]] for row, item in decided
                                if prefs.get(item["item"]) is not None]).to_dict()
                 for rubric, prefs in sorted(per_rubric.items())}

    reviewers = sorted({reviewer for reviewer, _, _ in answers})
    kappa = []
    for r1, r2 in combinations(reviewers, 2):
        shared = [(latest[(r1, i)], latest[(r2, i)], by_id[i]) for i in by_id
                  if (r1, i) in latest and (r2, i) in latest
                  and "skip" not in (latest[(r1, i)]["answer"], latest[(r2, i)]["answer"])]
        kappa.append({"reviewers": [r1, r2], "items": len(shared),
                      "agreement": (sum(category(a, it) == category(b, it) for a, b, it in shared) / len(shared)
                                    if shared else None),
                      "kappa": cohen_kappa([category(a, it) for a, _, it in shared],
                                           [category(b, it) for _, b, it in shared])})

    margins = [judge_margin(item, row["preferred"]) for row, item in decided]
    noise = noise_margin(margins)
    return {
        "items": len(items), "labels": len(answers), "reviewers": reviewers,
        "unknown_items": sum(item not in by_id for (_, item) in latest),
        "answers": {answer: counts.get(answer, 0) for answer in ("A", "B", "tie", "both_bad", "skip")},
        "judge_undecided": len(decided) - len(judged),
        "agreement": {**overall.to_dict(), "weighted": weighted,
                      "method": "weighted, Wilson at Kish effective n" if weighted else "Wilson"},
        "by_stratum": by_stratum, "by_flag": by_flag, "by_rubric": by_rubric,
        "position_bias": share([row["answer"] == "A" for row, _ in decided]).to_dict(),
        "inter_reviewer": kappa,
        "noise_margin": {"value": noise, "pairs": sum(m is not None and m != 0 for m in margins),
                         "min_pairs": NOISE_MIN_PAIRS, "implied_min_margin": noise},
    }
