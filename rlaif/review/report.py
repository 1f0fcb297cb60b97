"""`rlaif review report DIR`: the review's figures (`rlaif.review.stats`) as terminal text or JSON.

Reads ``DIR/review/items.jsonl`` and ``DIR/review/labels.jsonl`` and, for the per-rubric figures,
``DIR/judgements.jsonl`` when it is there. Nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlaif.errors import UserError
from rlaif.io.records import iter_jsonl
from rlaif.io.review_files import read_items, read_labels
from rlaif.review.stats import review_stats


def report_json(dir: str | Path) -> dict[str, Any]:
    """The figures of the review in run folder ``dir`` as a JSON-ready dict."""
    dir = Path(dir)
    items_path = dir / "review" / "items.jsonl"
    if not items_path.is_file():
        raise UserError(f"{items_path}: no review sample here; start one with `rlaif review {dir}`")
    items = read_items(items_path)
    labels = read_labels(dir / "review" / "labels.jsonl")
    judgements_path = dir / "judgements.jsonl"
    judgements = [row for _, row in iter_jsonl(judgements_path)] if judgements_path.is_file() else []
    return {"dir": str(dir), **review_stats(items, labels, judgements)}


def _share(s: dict[str, Any]) -> str:
    if s["value"] is None:
        return "n/a (no answers)"
    lo, hi = s["interval"]
    if s.get("n_eff") is not None:  # weighted: k is an effective count, not a number of answers
        return f"{s['value']:.2f} [{lo:.2f}, {hi:.2f}]  ({s['n']} answers, effective n {s['n_eff']:.1f})"
    return f"{s['value']:.2f} [{lo:.2f}, {hi:.2f}]  ({s['k']:g} of {s['n']})"


def _table(title: str, groups: dict[str, dict[str, Any]]) -> list[str]:
    if not groups:
        return []
    width = max(len(name) for name in groups)
    return [title] + [f"  {name:<{width}}  {_share(s)}" for name, s in groups.items()]


def format_report(dir: str | Path) -> str:
    """The figures as terminal text (one screen)."""
    r = report_json(dir)
    if not r["labels"]:
        return (f"review of {r['dir']}: {r['items']} items in the sample, no labels yet; "
                f"label some with `rlaif review {r['dir']}`")
    a = r["answers"]
    lines = [f"review of {r['dir']}: {r['labels']} answers on {r['items']} items by {len(r['reviewers'])} "
             f"reviewer(s) ({', '.join(r['reviewers'])})",
             f"answers: A {a['A']}, B {a['B']}, tie {a['tie']}, both bad {a['both_bad']}, skip {a['skip']}"
             + (f"; {r['judge_undecided']} A/B answers on pairs the judge left undecided" if r["judge_undecided"] else "")
             + (f"; {r['unknown_items']} labels on items not in the sample (ignored)" if r["unknown_items"] else ""),
             f"judge agrees with the person: {_share(r['agreement'])}  95% interval, {r['agreement']['method']}"]
    lines += _table("per margin bucket:", r["by_stratum"])
    lines += _table("per rubric (that rubric's scores alone):", r["by_rubric"])
    lines += _table("per flag:", r["by_flag"])
    lines.append(f"position bias of the person (share of A among A/B; 0.5 = none): {_share(r['position_bias'])}")
    for pair in r["inter_reviewer"]:
        kappa = "n/a" if pair["kappa"] is None else f"{pair['kappa']:.2f}"
        lines.append(f"reviewers {pair['reviewers'][0]} vs {pair['reviewers'][1]}: Cohen's kappa {kappa} on "
                     f"{pair['items']} shared items")
    noise = r["noise_margin"]
    if noise["value"] is None:
        lines.append(f"noise margin: n/a ({noise['pairs']} untied A/B answers; needs {noise['min_pairs']})")
    else:
        lines.append(f"noise margin: {noise['value']:g} from {noise['pairs']} A/B answers: below it this judge agrees "
                     f"with the person no better than chance; implied min_margin={noise['implied_min_margin']:g} "
                     f"(rlaif build ... min_margin={noise['implied_min_margin']:g})")
    return "\n".join(lines)
