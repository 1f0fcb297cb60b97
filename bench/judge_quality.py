"""Judge quality on the labelled set: agreement per rubric (method) x fault kind, and vs the margin.

Usage:
    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/judge_quality.py [--rubrics R ...]
        [--mix NAME=R1:W1,R2:W2 ...] [--margin-for NAME ...] [--json FILE] [key=value judge options]

Every rubric (default: each shipped rubrics/*.yaml) judges the 90 pairs of
bench/data/judge_pairs.jsonl with one judge engine (default: the embedded SmolLM2-135M-Instruct
on vLLM, ``judge.*`` options as key=value, e.g. ``judge.engine=hf``), through
`rlaif.judging.calibrate.calibrate`, the code behind `rlaif rubric calibrate`. A mix is scored
as `rlaif build` scores several rubrics: the weighted mean of each rubric's score normalised to
[0, 1] by its scale (`rlaif.dataset.pairs.combined_scores`), from the same judgements.

Agreement: the better response gets the strictly higher score (ties and failed judgements count
as disagreement). Position consistency (pairwise only): both orders prefer the same response.
Margin table: over the pairs whose |normalised margin| >= t, the share kept and the agreement
among them; `rlaif build --min-margin t` keeps exactly such pairs, so this is the precision of
the kept pairs as a function of ``min_margin``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SET = ROOT / "bench" / "data" / "judge_pairs.jsonl"
THRESHOLDS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


def normalised_pair(outcome, weights: dict[str, float] | None = None) -> tuple[float | None, float | None]:
    """(better, worse) normalised score of one calibration outcome; None on a failed judgement."""
    from rlaif.rewards.base import normalise

    row = outcome.judgement
    good = 0 if outcome.example.better == "a" else 1
    scores = [normalise(s, row["scale"]) for s in row["scores"]]
    return scores[good], scores[1 - good]


def setup_rows(reports: dict, mixes: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per setup (rubric or mix): method, fault kinds, per-pair margins (normalised) and agreement flags."""
    from rlaif.judging.calibrate import fault_kinds

    out: dict[str, dict] = {}
    first = next(iter(reports.values()))
    kinds = fault_kinds([o.example for o in first.outcomes]) or ["all"] * first.n
    for name, rep in reports.items():
        pairs = [normalised_pair(o) for o in rep.outcomes]
        out[name] = {"method": rep.method, "kinds": kinds, "agrees": [o.agrees for o in rep.outcomes],
                     "margins": [None if b is None or w is None else b - w for b, w in pairs],
                     "consistent": [o.consistent for o in rep.outcomes], "seconds": rep.seconds}
    for name, weights in mixes.items():
        total = sum(weights.values())
        margins: list[float | None] = []
        for k in range(first.n):
            parts = [(w, normalised_pair(reports[r].outcomes[k])) for r, w in weights.items()]
            if any(b is None or wo is None for _, (b, wo) in parts):
                margins.append(None)
            else:
                margins.append(sum(w * (b - wo) for w, (b, wo) in parts) / total)
        out[name] = {"method": "mix " + "+".join(f"{r}:{w:g}" for r, w in weights.items()), "kinds": kinds,
                     "agrees": [m is not None and m > 0 for m in margins], "margins": margins,
                     "consistent": [None] * first.n, "seconds": sum(reports[r].seconds for r in weights)}
    return out


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}"


def quality_table(rows: dict[str, dict]) -> str:
    """Markdown: agreement (%) per setup x fault kind, overall, position consistency, seconds."""
    kinds = list(dict.fromkeys(next(iter(rows.values()))["kinds"]))
    head = ["setup", "method", "all"] + kinds + ["pos. cons.", "judge s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, r["method"], pct(sum(r["agrees"]) / len(r["agrees"]))]
        for kind in kinds:
            flags = [a for a, k in zip(r["agrees"], r["kinds"]) if k == kind]
            cells.append(pct(sum(flags) / len(flags)))
        cons = [c for c in r["consistent"] if c is not None]
        cells += [pct(sum(cons) / len(cons)) if cons else "-", f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def margin_curve(r: dict) -> list[dict]:
    """For each threshold t: share of pairs with |margin| >= t and the agreement among them."""
    out = []
    n = len(r["margins"])
    for t in THRESHOLDS:
        kept = [m for m in r["margins"] if m is not None and abs(m) >= t and m != 0]
        right = sum(m > 0 for m in kept)
        out.append({"t": t, "kept": len(kept) / n, "agreement": right / len(kept) if kept else None})
    return out


def margin_bins(r: dict, edges: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 1.01)) -> list[dict]:
    """Agreement of the pairs whose |margin| falls in each bin [lo, hi): where the judge is noise."""
    out = []
    for lo, hi in zip(edges, edges[1:]):
        ms = [m for m in r["margins"] if m is not None and lo <= abs(m) < hi]
        out.append({"lo": lo, "hi": hi, "n": len(ms), "agreement": sum(m > 0 for m in ms) / len(ms) if ms else None})
    return out


def margin_table(name: str, r: dict) -> str:
    lines = [f"{name}: agreement among the pairs kept by min_margin t (|normalised margin| >= t)",
             "| t | " + " | ".join(f"{t:g}" for t in THRESHOLDS) + " |", "|" + "---|" * (len(THRESHOLDS) + 1)]
    curve = margin_curve(r)
    lines.append("| kept % | " + " | ".join(pct(c["kept"]) for c in curve) + " |")
    lines.append("| agreement % | " + " | ".join(pct(c["agreement"]) for c in curve) + " |")
    bins = margin_bins(r)
    lines.append("per |margin| bin: " + ", ".join(f"[{b['lo']:g}, {b['hi']:g}): {pct(b['agreement'])}% of {b['n']}"
                                                  for b in bins))
    return "\n".join(lines)


def parse_mix(spec: str) -> tuple[str, dict[str, float]]:
    name, _, parts = spec.partition("=")
    weights = {}
    for part in parts.split(","):
        rubric, _, w = part.partition(":")
        weights[rubric] = float(w or 1)
    return name, weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rubrics", nargs="*", help="rubric names or paths (default: every shipped rubric)")
    ap.add_argument("--mix", action="append", default=[], metavar="NAME=R1:W1,R2:W2",
                    help="a weighted mix of rubrics judged above, scored like rlaif build (repeatable)")
    ap.add_argument("--margin-for", nargs="*", default=None, help="setups to print the margin table for "
                    "(default: the mixes, else every rubric)")
    ap.add_argument("--examples", default=str(SET), help="labelled set (default: bench/data/judge_pairs.jsonl)")
    ap.add_argument("--json", help="also write per-setup figures and margins here")
    ap.add_argument("overrides", nargs="*", help="judge options as key=value (judge.engine=hf, ...)")
    args = ap.parse_args()

    from rlaif.backends import load_backend
    from rlaif.commands.rubric import RubricCommandConfig
    from rlaif.config import load_config
    from rlaif.judging.calibrate import calibrate, read_examples
    from rlaif.judging.rubrics import SHIPPED_RUBRICS, load_rubric

    cfg = load_config(RubricCommandConfig, None, ["judge.gpu_memory_utilization=0.2", *args.overrides])
    names = args.rubrics or sorted(p.stem for p in SHIPPED_RUBRICS.glob("*.yaml"))
    rubrics = [load_rubric(n) for n in names]
    mixes = dict(parse_mix(s) for s in args.mix)
    examples = read_examples(args.examples)
    backend = load_backend(cfg.judge)
    reports = {}
    try:
        for rubric in rubrics:
            start = time.perf_counter()
            rep = calibrate(backend, rubric, examples, seed=cfg.seed, verdict_retries=cfg.verdict_retries,
                            progress=False)
            rep.seconds = time.perf_counter() - start
            reports[rubric.name] = rep
            print(f"{rubric.name} ({rubric.method}): agreement {rep.agreement:.2f} in {rep.seconds:.0f} s",
                  file=sys.stderr)
    finally:
        backend.close()
    rows = setup_rows(reports, mixes)
    print(f"judge {backend.model_id}, {len(examples)} labelled pairs ({args.examples}); agreement % per fault kind\n")
    print(quality_table(rows))
    for name in (args.margin_for if args.margin_for is not None else (list(mixes) or list(rows))):
        print()
        print(margin_table(name, rows[name]))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"judge": backend.model_id, "examples": args.examples,
             "setups": {n: {**r, "curve": margin_curve(r), "bins": margin_bins(r)} for n, r in rows.items()}},
            indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
