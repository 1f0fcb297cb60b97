"""`--labels DIR/review/labels.jsonl`: people's verdicts from `rlaif review` override the judge's.

Per item (a pair ``<prompt id>:<i>:<j>`` of one prompt's candidates) each reviewer's latest answer
counts (`latest_labels`); ``skip`` counts for nothing. The item's verdict is what a strict majority
of the other answers says: candidate i or j preferred, or *drop* (``tie`` / ``both_bad``); without a
strict majority the reviewers disagree and the judge's verdict stands (counted). The pair builder
then applies the verdicts (`apply_verdicts`): a kept judge pair the person confirmed is *agreed*,
one the person reversed is *flipped*, one the person called a tie or both bad is *dropped*; a pair
the person decided that the judge dropped or never formed is *added*. Person pairs carry
``"label_source": "person"`` and ``margin`` = the judge's margin in the person's direction, floored
at 0 (0 where the judge disagreed or failed).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.errors import UserError, where
from rlaif.io.review_files import DECIDED, DROP, item_verdicts, iter_labels, labels_digest, latest_labels


@dataclass
class Verdicts:
    """People's verdicts by prompt id: ``{(i, j): preferred candidate, or DROP (tie / both bad)}``, i < j."""

    path: str
    sha256: str
    by_prompt: dict[str, dict[tuple[int, int], int | str]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)  # labels, reviewers, skipped, disagreements
    reviewers: list[str] = field(default_factory=list)


def parse_item(item: str) -> tuple[str, int, int] | None:
    """``"<prompt id>:<i>:<j>"`` -> (prompt id, i, j); None if it is not of that shape."""
    parts = item.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


def check_labels_file(path: str | Path) -> Path:
    """The labels file exists and every row is well formed (before a run writes anything)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"option 'labels': {path}: file not found")
    for _ in iter_labels(path):
        pass
    return path


def read_verdicts(path: str | Path, candidates: list[dict]) -> Verdicts:
    """Read a labels file and resolve each item's verdict; a label on a pair that is not two of this
    run's candidates is a one-line UserError naming file:line."""
    path = check_labels_file(path)
    sizes = {c["id"]: len(c["responses"]) for c in candidates}
    rows = []
    for line, row in iter_labels(path):
        parsed = parse_item(row["item"])
        if parsed is None or parsed[0] not in sizes or not 0 <= parsed[1] < parsed[2] < sizes[parsed[0]]:
            raise UserError(f"{where(path, line, 'item')}{row['item']!r} is not a pair of this run's candidates "
                            f"(labels from a review of another run folder?)")
        if row["answer"] in DECIDED and row["preferred"] not in parsed[1:]:
            raise UserError(f"{where(path, line, 'preferred')}{row['preferred']} is neither candidate of {row['item']!r}")
        rows.append(row)
    latest = latest_labels(rows)
    verdicts = Verdicts(str(path), labels_digest(path), reviewers=sorted({r for r, _ in latest}))
    verdicts.counts["labels"] = len(latest)
    resolved = item_verdicts(latest)
    verdicts.counts["skipped"] = len({item for _, item in latest} - set(resolved))
    for item, verdict in resolved.items():
        if verdict is None:
            verdicts.counts["disagreements"] += 1
            continue
        prompt_id, i, j = parse_item(item)  # type: ignore[misc]
        verdicts.by_prompt.setdefault(prompt_id, {})[(i, j)] = verdict
    return verdicts


def apply_verdicts(judged: list[tuple[int, int]], verdicts: dict[tuple[int, int], int | str],
                   scores: list[float | None], stats: Counter) -> list[tuple[int, int, bool]]:
    """One prompt's (chosen, rejected) judge pairs with the person's verdicts applied, as
    (chosen, rejected, by_person); counts agreement with the judge's scores on the decided pairs."""
    out: list[tuple[int, int, bool]] = []
    seen = set()
    for chosen, rejected in judged:
        key = (min(chosen, rejected), max(chosen, rejected))
        verdict = verdicts.get(key)
        seen.add(key)
        if verdict is None:
            out.append((chosen, rejected, False))
        elif verdict == DROP:
            stats["review_dropped"] += 1
        elif verdict == chosen:
            stats["review_agreed"] += 1
            out.append((chosen, rejected, True))
        else:
            stats["review_flipped"] += 1
            out.append((rejected, chosen, True))
    for (i, j), verdict in sorted(verdicts.items()):
        if (i, j) not in seen and verdict != DROP:
            stats["review_added"] += 1
            out.append((verdict, j if verdict == i else i, True))
    for (i, j), verdict in verdicts.items():  # the judge's own preference on every decided item
        if verdict != DROP and scores[i] is not None and scores[j] is not None and scores[i] != scores[j]:
            stats["review_judge_decided"] += 1
            stats["review_judge_agrees"] += (scores[i] > scores[j]) == (verdict == i)
    return out


def review_summary(verdicts: Verdicts, stats: Counter) -> dict[str, Any]:
    """The manifest's ``review`` record: what the labels did to the pairs, and judge-vs-person agreement."""
    from rlaif.judging.calibrate import wilson

    decided, agrees = stats["review_judge_decided"], stats["review_judge_agrees"]
    interval = wilson(agrees, decided)
    return {"labels": verdicts.path, "sha256": verdicts.sha256, "reviewers": verdicts.reviewers,
            "answers": verdicts.counts["labels"], "items_decided": sum(map(len, verdicts.by_prompt.values())),
            "skipped": verdicts.counts["skipped"], "disagreements": verdicts.counts["disagreements"],
            "reviewed_pairs": stats["review_agreed"] + stats["review_flipped"] + stats["review_added"],
            "agreed": stats["review_agreed"], "flipped": stats["review_flipped"], "added": stats["review_added"],
            "dropped": stats["review_dropped"], "judge_decided": decided,
            "agreement": agrees / decided if decided else None, "interval": list(interval) if interval else None}


def review_line(review: dict[str, Any]) -> str:
    """The dataset card's line: "N pairs reviewed by people, agreement X [lo, hi]"."""
    agreement = ("n/a" if review["agreement"] is None else
                 f"{review['agreement']:.2f} [{review['interval'][0]:.2f}, {review['interval'][1]:.2f}] "
                 f"on {review['judge_decided']} items")
    return (f"{review['reviewed_pairs']} pairs reviewed by people ({review['agreed']} agreed with the judge, "
            f"{review['flipped']} flipped, {review['added']} added; {review['dropped']} dropped as tie or both bad), "
            f"judge-vs-person agreement {agreement}")
