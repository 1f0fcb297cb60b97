"""The review's sample: which of a run's judged pairs a person is asked about (``DIR/review/items.jsonl``).

Population: every prompt judged by all the run's rubrics (manifest.json's build stage), every pair
``i < j`` of its candidates with distinct texts and a combined score on both (`combined_scores`, the
build's own; a pair the judge could not score tells nothing about the judge). Each pair carries the
judge's view: both combined scores, the preferred candidate (None when equal), the margin
``|S_i - S_j|``, per-rubric reasons (checks, rationale or pairwise probability) and flags
(``truncated``: either response cut off; ``near_noise``: margin <= the run's noise margin;
``position_inconsistent``: a pairwise rubric's two orders disagreed).

Strategies (seeded, reproducible):
- ``margin`` (default): strata by margin, ``near`` (<= the noise margin when the run knows it, else
  the lowest third of margins), and the rest split at their median into ``mid`` and ``far``. The
  near stratum gets half the sample (where a judge errs most), mid and far share the rest in
  proportion to their size. Each item's ``weight`` is its stratum's population share over its
  sample share, ``(N_h / N) / (n_h / n)``, so weighted figures estimate the whole population
  (stratified sampling, Cochran 1977, ch. 5).
- ``random``: a simple random sample, weight 1.
- ``flagged``: a random sample of the pairs with any flag, weight 1.

The shown order (A left, B right) is random per item, seeded by (seed, item), so a person's own
position bias can be measured.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rlaif.dataset.pairs import TIE_EPS, combined_scores, truncation_flags
from rlaif.errors import UserError
from rlaif.io.outdir import claim, listed
from rlaif.io.records import read_jsonl
from rlaif.io.review_files import read_items, write_items

STRATEGIES = ("margin", "random", "flagged")
DEFAULT_SIZE = 50


REVIEW = "review"  # the run folder's entry for the review's files (listed in its rlaif marker)


def review_dir(run: Path) -> Path:
    return run / REVIEW


def _build_facts(run: Path) -> tuple[list[str], dict[str, float], float | None]:
    """The run's rubrics, rubric weights and noise margin, from manifest.json's build stage."""
    path = run / "manifest.json"
    if not path.is_file():
        raise UserError(f"{run}: no manifest.json: review a folder written by `rlaif run` or `rlaif build`")
    try:
        build = json.loads(path.read_text(encoding="utf-8"))["stages"]["build"]
        rubrics = list(build["rubrics"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: no build stage with its rubrics: run `rlaif build` in this folder first") from None
    weights = build.get("config", {}).get("rubric_weights") or {}
    noise = (build.get("noise_margin") or {}).get("value")
    return rubrics, weights, noise if isinstance(noise, (int, float)) else None


def _kept_pairs(run: Path) -> set[tuple[str, str, str]]:
    """(prompt id, chosen text, rejected text) of every pair the build kept."""
    kept = set()
    for name in ("train.jsonl", "test.jsonl"):
        path = run / "preferences" / name
        if path.is_file():
            for row in read_jsonl(path):
                kept.add((row["id"], row["chosen"][-1]["content"], row["rejected"][-1]["content"]))
    return kept


def _reason(row: dict, index: int, other: int) -> str | None:
    """What a rubric's judgement says about response ``index`` (against ``other``), in one line."""
    score = row["scores"][index] if index < len(row["scores"]) else None
    parts = [f"score {score:.3g}" if isinstance(score, (int, float)) else "no score"]
    details = row.get("details") or []
    detail = details[index] if index < len(details) and isinstance(details[index], dict) else {}
    if detail.get("checks"):
        checks = detail["checks"]
        failed = [f"{c.get('check')} ({c.get('why')})" for c in checks if c.get("passed") is False]
        parts.append(f"passed {sum(c.get('passed') is True for c in checks)}/{len(checks)} checks"
                     + (f"; failed: {'; '.join(failed)}" if failed else ""))
    for key in ("rationale", "error"):
        if isinstance(detail.get(key), str) and detail[key].strip():
            parts.append(detail[key].strip())
    for c in row.get("comparisons") or []:
        if {c.get("i"), c.get("j")} == {index, other} and c.get("p") is not None:
            p = c["p"] if c["i"] == index else 1.0 - c["p"]
            parts.append(f"P(better than the other) {p:.2f}"
                         + (", the two orders disagreed" if c.get("consistent") is False else ""))
    return "; ".join(parts)


def _inconsistent(rows: dict[str, dict], i: int, j: int) -> bool:
    return any({c.get("i"), c.get("j")} == {i, j} and c.get("consistent") is False
               for row in rows.values() for c in row.get("comparisons") or [])


def population(run: Path) -> tuple[list[dict], float | None]:
    """Every reviewable pair of the run as an item without its sample fields; and the noise margin."""
    rubrics, weights, noise = _build_facts(run)
    for name in ("candidates.jsonl", "judgements.jsonl"):
        if not (run / name).is_file():
            raise UserError(f"{run}: no {name}: review a folder written by `rlaif run`")
    by_id: dict[str, dict[str, dict]] = {}
    for row in read_jsonl(run / "judgements.jsonl"):
        if row["rubric"] in rubrics:
            by_id.setdefault(row["id"], {})[row["rubric"]] = row
    kept = _kept_pairs(run)
    items = []
    for cand in read_jsonl(run / "candidates.jsonl"):
        rows = by_id.get(cand["id"], {})
        if set(rows) != set(rubrics):
            continue
        rows = {rubric: rows[rubric] for rubric in rubrics}
        scores = combined_scores(rows, weights)
        cut = truncation_flags(cand)
        judge = "+".join(dict.fromkeys(row["judge"] for row in rows.values()))
        responses = cand["responses"]
        for i in range(len(responses)):
            for j in range(i + 1, len(responses)):
                s_i, s_j = scores[i], scores[j]
                if responses[i] == responses[j] or s_i is None or s_j is None:
                    continue
                margin = abs(s_i - s_j)
                flags = (["truncated"] if cut[i] is True or cut[j] is True else []) \
                    + (["near_noise"] if noise is not None and margin <= noise else []) \
                    + (["position_inconsistent"] if _inconsistent(rows, i, j) else [])
                text_i, text_j = responses[i], responses[j]
                items.append({
                    "item": f"{cand['id']}:{i}:{j}", "prompt_id": cand["id"], "prompt": cand["messages"],
                    "candidates": [i, j], "responses": [text_i, text_j],
                    "judge": {"scores": [s_i, s_j], "preferred": None if margin <= TIE_EPS else (i if s_i > s_j else j),
                              "margin": margin, "rubric": "+".join(rubrics), "judge": judge,
                              "reasons": {r: [_reason(row, i, j), _reason(row, j, i)] for r, row in rows.items()},
                              "flags": flags},
                    "in_dataset": (cand["id"], text_i, text_j) in kept or (cand["id"], text_j, text_i) in kept,
                })
    return items, noise


def strata(items: list[dict], noise: float | None) -> dict[str, list[dict]]:
    """near / mid / far by margin (module docstring); each list in population order."""
    margins = sorted(item["judge"]["margin"] for item in items)
    if noise is not None:
        near_cut = noise
    else:
        near_cut = margins[len(margins) // 3 - 1] if len(margins) >= 3 else float("-inf")
    near = [item for item in items if item["judge"]["margin"] <= near_cut]
    rest = [item for item in items if item["judge"]["margin"] > near_cut]
    rest_margins = sorted(item["judge"]["margin"] for item in rest)
    median = rest_margins[(len(rest_margins) - 1) // 2] if rest_margins else 0.0
    return {"near": near, "mid": [item for item in rest if item["judge"]["margin"] <= median],
            "far": [item for item in rest if item["judge"]["margin"] > median]}


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """How many items each stratum gives: half to near, the rest to mid/far by size, short strata's
    shares passed on to the others."""
    take = {"near": min(sizes["near"], (n + 1) // 2)}
    rest, others = n - take["near"], sizes["mid"] + sizes["far"]
    take["mid"] = min(sizes["mid"], rest * sizes["mid"] // others) if others else 0
    take["far"] = min(sizes["far"], rest - take["mid"])
    left = n - sum(take.values())
    for name in ("near", "mid", "far"):
        extra = min(left, sizes[name] - take[name])
        take[name] += extra
        left -= extra
    return take


def sample(items: list[dict], noise: float | None, strategy: str, size: int, seed: int) -> list[dict]:
    """The seeded sample (module docstring), each item completed with stratum, weight, show and sample."""
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy}: expected one of {', '.join(STRATEGIES)}")
    rng = random.Random(seed)
    record = {"strategy": strategy, "seed": seed, "size": size}
    chosen: list[dict] = []
    if strategy == "margin":
        groups = strata(items, noise)
        take = allocate({name: len(group) for name, group in groups.items()}, min(size, len(items)))
        total = sum(take.values())
        for name, group in groups.items():
            for item in rng.sample(group, take[name]):
                weight = (len(group) / len(items)) / (take[name] / total)
                chosen.append({**item, "stratum": name, "weight": weight})
    else:
        pool = items if strategy == "random" else [item for item in items if item["judge"]["flags"]]
        chosen = [{**item, "stratum": "all", "weight": 1.0} for item in rng.sample(pool, min(size, len(pool)))]
    rng.shuffle(chosen)  # strata interleaved: the person cannot tell near from far by position
    for item in chosen:
        show = list(item["candidates"])
        random.Random(f"{seed}:{item['item']}").shuffle(show)
        item["show"], item["sample"] = show, record
    return chosen


def load_or_sample(run: Path, *, size: int | None, strategy: str | None, seed: int | None,
                   resample: bool = False) -> tuple[list[dict], bool]:
    """The run's review items: DIR/review/items.jsonl if it exists (a different sample asked for is
    refused unless ``resample``; the old file is kept as items.prev.jsonl), else a new sample written
    once. Returns (items, newly sampled)."""
    path = review_dir(run) / "items.jsonl"
    if path.is_file() and not resample:
        items = read_items(path)
        recorded = items[0]["sample"] if items else {}
        asked = {"size": size, "strategy": strategy, "seed": seed}
        differs = [f"--{'sample' if k == 'size' else k} {v} (recorded {recorded.get(k)})"
                   for k, v in asked.items() if v is not None and v != recorded.get(k)]
        if differs:
            raise UserError(f"{path}: this review was sampled otherwise: {', '.join(differs)}; "
                            f"give --resample to draw a new sample (labels are kept)")
        return items, False
    pop, noise = population(run)
    if not pop:
        raise UserError(f"{run}: no judged pair with two scored, different responses to review")
    items = sample(pop, noise, strategy or "margin", DEFAULT_SIZE if size is None else size,
                   0 if seed is None else seed)
    if not items:
        raise UserError(f"{run}: no pair matches --strategy {strategy} (no flagged pair)")
    if listed(run) is not None:  # the run's marker lists review/ so later stages accept it (and never remove it)
        claim(run, REVIEW)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        path.replace(path.with_name("items.prev.jsonl"))
    write_items(path, items)
    return items, True


def public(item: dict[str, Any]) -> dict[str, Any]:
    """What the page shows before the person answers: the prompt and the two responses in shown order."""
    first, second = item["show"]
    text = dict(zip(item["candidates"], item["responses"]))
    return {"item": item["item"], "prompt_id": item["prompt_id"], "prompt": item["prompt"],
            "show": item["show"], "responses": [text[first], text[second]]}
