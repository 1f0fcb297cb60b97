"""Judged candidates per second: shipped rubrics vs the same rubrics at an earlier commit, one engine.

Usage:
    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/judge_speed.py [--base COMMIT] [--rubrics R ...]
        [--rounds 3] [--block-size N] [key=value judge options]

The candidates are the 180 responses of bench/data/judge_pairs.jsonl (90 prompts x 2). Each
rubric is judged as shipped now and as it was at ``--base`` (read with ``git show``; default: the
commit before the template rewrite), alternately, ``--rounds`` times, on ONE judge engine (the
embedded model on vLLM unless ``judge.*`` says otherwise). vLLM's prefix cache is emptied before
every timed call, so each call pays for what it does not share within itself (the fixed rubric
text, and a prompt shared by its candidates), as a fresh `rlaif judge` run does. Reported: the
median candidates/s per rubric and version, and the ratio new/old.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SET = ROOT / "bench" / "data" / "judge_pairs.jsonl"
BASE = "7e24332"  # rubrics as they were before the prefix-first templates


def rubric_at(commit: str, name: str, folder: Path):
    """Load rubrics/NAME.yaml (and its template file) as it was at ``commit``."""
    from rlaif.judging.rubrics import load_rubric

    text = subprocess.run(["git", "show", f"{commit}:rubrics/{name}.yaml"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("template_file:"):
            tname = line.split(":", 1)[1].strip()
            tfile = subprocess.run(["git", "show", f"{commit}:rubrics/{tname}"], cwd=ROOT, check=True,
                                   capture_output=True, text=True).stdout
            (folder / tname).write_text(tfile, encoding="utf-8")
    return load_rubric(folder / f"{name}.yaml")


def prompt_tokens(backend, rubric, items) -> float:
    """Mean judge-input tokens per candidate (what one prefill processes without the cache)."""
    from rlaif.backends.choices import render_prompt
    from rlaif.backends.turns import reply_token_ids
    from rlaif.judging.judge import requests_for

    tok = backend.tokenizer
    sizes = []
    for k, item in enumerate(items):
        for r in requests_for(rubric, item, k):
            if rubric.method == "likelihood":
                p, reply = reply_token_ids(tok, r.conversation, r.reply)
                sizes.append(len(p) + len(reply))
            else:
                sizes.append(len(tok.encode(render_prompt(tok, r.conversation, rubric.assistant_prefix),
                                            add_special_tokens=False)))
    return sum(sizes) / max(1, sum(len(it.responses) for it in items))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=BASE, help="commit whose rubrics are 'before' (default %(default)s)")
    ap.add_argument("--rubrics", nargs="*", default=["helpfulness", "honesty", "harmlessness"],
                    help="shipped rubric names present at --base (default: %(default)s)")
    ap.add_argument("--new-only", nargs="*", default=[], help="rubrics only timed as shipped now (e.g. new ones)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block-size", type=int, help="vLLM KV-cache block size (rlaif's CPU default 32; vLLM's own 128)")
    ap.add_argument("overrides", nargs="*", help="judge options as key=value")
    args = ap.parse_args()

    from rlaif.backends import load_backend
    from rlaif.commands.rubric import RubricCommandConfig
    from rlaif.config import load_config
    from rlaif.io.records import as_messages
    from rlaif.judging.calibrate import read_examples
    from rlaif.judging.judge import JudgeItem, judge_items
    from rlaif.judging.rubrics import load_rubric

    block = [f"judge.block_size={args.block_size}"] if args.block_size else []
    cfg = load_config(RubricCommandConfig, None, ["judge.gpu_memory_utilization=0.2", *block, *args.overrides])
    items = [JudgeItem(ex.id, as_messages(ex.prompt), [ex.response_a, ex.response_b]) for ex in read_examples(SET)]
    n_cand = sum(len(it.responses) for it in items)
    tmp = Path(tempfile.mkdtemp(prefix="judge-speed-"))
    setups = [(f"{n} @{args.base}", rubric_at(args.base, n, tmp)) for n in args.rubrics]
    setups += [(f"{n} now", load_rubric(n)) for n in args.rubrics + args.new_only]
    backend = load_backend(cfg.judge)
    llm = getattr(backend, "llm", None)
    times: dict[str, list[float]] = {name: [] for name, _ in setups}
    try:
        judge_items(backend, setups[0][1], items[:4], progress=False)  # warm-up
        for _ in range(args.rounds):
            for name, rubric in setups:
                if llm is not None:
                    llm.reset_prefix_cache()
                start = time.perf_counter()
                judge_items(backend, rubric, items, progress=False)
                times[name].append(time.perf_counter() - start)
                print(f"{name}: {times[name][-1]:.1f} s", file=sys.stderr)
        tokens = {name: prompt_tokens(backend, rubric, items) for name, rubric in setups}
    finally:
        backend.close()
    print(f"judge {backend.model_id}, {n_cand} candidates, median of {args.rounds} rounds"
          + (f", block_size {args.block_size}" if args.block_size else ""))
    print("| rubric | version | method | input tokens / candidate | candidates/s | vs before |")
    print("|---|---|---|---|---|---|")
    rate = {name: n_cand / statistics.median(ts) for name, ts in times.items()}
    for name, rubric in setups:
        base, _, version = name.rpartition(" ")
        before = rate.get(f"{base} @{args.base}")
        ratio = f"{rate[name] / before:.2f}x" if before and version == "now" else ""
        print(f"| {base} | {version} | {rubric.method} | {tokens[name]:.0f} | {rate[name]:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
