"""Peak memory of `rlaif run` against the number of prompts (issue 20 item 10: big inputs).

Writes synthetic prompt files of N rows, runs ``rlaif run`` on the fake engine (so the model is not
the cost) in a subprocess per N, and prints a table of peak RSS (``ru_maxrss`` of the child) and
wall time. Flat peak RSS against N is the goal; the baseline Python + imports is the first row's.

    PYTHONPATH=$PWD .venv/bin/python bench/stream_memory.py --rows 1000 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = ("import resource, sys\n"
         "from rlaif.cli import main\n"
         "rc = main(sys.argv[1:])\n"
         "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
         "sys.exit(rc)\n")


def write_prompts(path: Path, rows: int) -> None:
    """``rows`` distinct prompts of ~200 bytes each, with an id and a metadata field."""
    with open(path, "w", encoding="utf-8") as fh:
        for index in range(rows):
            text = f"Question {index}: explain topic {index % 97} in simple words, with an example. " * 2
            fh.write(json.dumps({"id": f"p{index}", "prompt": text, "topic": index % 97}) + "\n")


def run_once(prompts: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and wall seconds of one `rlaif run` in a fresh interpreter."""
    cmd = [sys.executable, "-c", CHILD, "run", "--prompts", str(prompts), "--out", str(out),
           "policy.engine=fake", "progress=false", *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"rlaif run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    kb = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB"))
    return kb / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--rubric", default="answer_checks", help="rubric of the run (rules: no judge model)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--keep", help="folder to keep the runs in (default: a temporary one)")
    args = parser.parse_args()
    extra = ["--rubric", args.rubric, f"n={args.n}", "max_tokens=32"]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        base.mkdir(parents=True, exist_ok=True)
        print(f"| prompts | peak RSS (MiB) | wall (s) | prompt file (MiB) |\n|---|---|---|---|", flush=True)
        for rows in args.rows:
            prompts = base / f"prompts_{rows}.jsonl"
            write_prompts(prompts, rows)
            rss, seconds = run_once(prompts, base / f"run_{rows}", extra)
            size = prompts.stat().st_size / 2**20
            print(f"| {rows:,} | {rss:.0f} | {seconds:.1f} | {size:.1f} |", flush=True)


if __name__ == "__main__":
    main()
