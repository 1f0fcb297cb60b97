"""Verb ``eval``: the win rate of A over B, with a 95% interval and a length-controlled win rate.

    rlaif eval --a MODEL|CANDIDATES.jsonl --b MODEL|CANDIDATES.jsonl --prompts FILE --rubric R
               [--reward python:FILE.py:FUNC] --out DIR [key=value ...]
    rlaif eval --benchmark FILE|basic --a MODEL [--b MODEL] --out DIR [key=value ...]
"""

from __future__ import annotations

import argparse
from typing import Any

from rlaif.config import add_config_arguments, load_config

DESCRIPTION = ("win rate of A over B: generate with each model side (same seeds), judge every pair with rubrics "
               "(pairwise ones in both orders) and/or rewards -> DIR/eval.json, eval.jsonl, report.html "
               "(resumable; rerun the same command after a crash to continue); with --benchmark FILE: accuracy "
               "of A (and B, paired) against reference answers -> DIR/benchmark.json, benchmark.jsonl, report.html")


def _flags(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """The command-line flags given, as config keys (``--overwrite``: overwrite=true)."""
    flags: dict[str, Any] = {key: value for key in keys if (value := getattr(args, key, None))}
    if args.overwrite_flag:
        flags["overwrite"] = True
    return flags


def _benchmark(args: argparse.Namespace) -> int:
    """``--benchmark``: accuracy against reference answers instead of a judged win rate."""
    from rlaif.errors import UserError
    from rlaif.eval.benchmark import run_benchmark
    from rlaif.eval.benchmark_options import BenchmarkConfig
    from rlaif.eval.benchmark_report import format_table

    for flag in ("prompts", "rubric", "reward"):
        if getattr(args, flag, None):
            raise UserError(f"option '--{flag}': not used with --benchmark (its rows hold the prompts, answers "
                            "and checkers)")
    cfg = load_config(BenchmarkConfig, args.config, args.overrides, flags=_flags(args, ("benchmark", "a", "b", "out")))
    summary = run_benchmark(cfg)
    print(format_table(summary))
    print(f"summary: {cfg.out}/benchmark.json   items: {cfg.out}/benchmark.jsonl   report: {cfg.out}/report.html")
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.benchmark:
        return _benchmark(args)
    from rlaif.eval.evaluate import run_eval
    from rlaif.eval.report import format_table
    from rlaif.eval.options import EvalConfig

    flags = _flags(args, ("a", "b", "prompts", "out"))
    if args.rubric:
        flags["rubrics"] = args.rubric
    if args.reward:
        flags["rewards"] = args.reward
    cfg = load_config(EvalConfig, args.config, args.overrides, flags=flags)
    summary = run_eval(cfg)
    print(format_table(summary))
    print(f"summary: {cfg.out}/eval.json   pairs: {cfg.out}/eval.jsonl   report: {cfg.out}/report.html")
    return 0


def add_parsers(subparsers: Any) -> None:
    from rlaif.eval.options import EvalConfig

    p = subparsers.add_parser("eval", help=DESCRIPTION, description=DESCRIPTION)
    p.add_argument("--a", metavar="MODEL|FILE", help="side A: a model or a candidates .jsonl (same as a=...)")
    p.add_argument("--b", metavar="MODEL|FILE", help="side B, the baseline (same as b=...)")
    p.add_argument("--prompts", metavar="FILE", help="prompt file (same as prompts=FILE)")
    p.add_argument("--rubric", action="append", metavar="R",
                   help="rubric name or YAML path; repeat for several (same as rubrics=[R,...])")
    p.add_argument("--reward", action="append", metavar="SPEC",
                   help="python:FILE.py:FUNC or rm:DIR; repeat for several (same as rewards=[SPEC,...])")
    p.add_argument("--benchmark", metavar="FILE",
                   help="score side A (and B) against reference answers instead: a benchmark JSONL of {prompt, "
                        "answer, check?} or a shipped set (basic); key=value options are then those of "
                        "rlaif.eval.benchmark_options (check, tolerance, max_tokens, temperature=0, policy.*)")
    p.add_argument("--out", metavar="DIR", help="output folder (same as out=DIR)")
    p.add_argument("--overwrite", dest="overwrite_flag", action="store_true",
                   help="start over instead of resuming (same as overwrite=true)")
    add_config_arguments(p, EvalConfig)
    p.set_defaults(func=_eval)
