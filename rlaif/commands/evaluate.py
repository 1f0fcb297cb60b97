"""Verb ``eval``: the win rate of A over B, with a 95% interval and a length-controlled win rate.

    rlaif eval --a MODEL|CANDIDATES.jsonl --b MODEL|CANDIDATES.jsonl --prompts FILE --rubric R
               [--reward python:FILE.py:FUNC] --out DIR [key=value ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rlaif.config import add_config_arguments, load_config

DESCRIPTION = ("win rate of A over B: generate with each model side (same seeds), judge every pair with rubrics "
               "(pairwise ones in both orders) and/or rewards -> DIR/eval.json, eval.jsonl, report.html "
               "(resumable; rerun the same command after a crash to continue)")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def short_name(source: str) -> str:
    """``python:/long/path/f.py:fn`` -> ``python:f.py:fn``; ``rm:/path/dir`` -> ``rm:dir`` (for the table)."""
    scheme, sep, target = source.partition(":")
    if not sep or scheme not in ("python", "rm"):
        return source
    file, colon, func = target.rpartition(":") if scheme == "python" else (target, "", "")
    return f"{scheme}:{Path(file).name}{colon}{func}"


def format_table(s: dict[str, Any]) -> str:
    """The short table printed at the end of ``rlaif eval``."""
    from rlaif.eval.report import verdict_line

    unit = s.get("length_unit")
    lines = [f"A: {s['a']}", f"B: {s['b']}",
             f"{'source':<34} {'pairs':>5} {'W/L/T':>11} {'win rate':>9} {'95% interval':>17} {'LC':>7}"]
    rows = list(s.get("by_source", {}).items())
    if len(rows) > 1:
        rows.append(("all (majority)", s))
    for name, v in rows:
        vci = v.get("win_rate_ci") or [None, None]
        wlt = f"{v['wins']}/{v['losses']}/{v['ties']}"
        interval = f"[{_pct(vci[0])}, {_pct(vci[1])}]"
        lines.append(f"{short_name(name)[:34]:<34} {v['n']:>5} {wlt:>11} {_pct(v['win_rate']):>9} {interval:>17} "
                     f"{_pct(v['lc_win_rate']):>7}")
    lines.append(f"position consistency {_pct(s.get('position_consistency'))}   failed pairs {s.get('failed')}")
    lines.append(f"mean length A {s['mean_length_a'] or 0:.1f} / B {s['mean_length_b'] or 0:.1f} {unit}   "
                 f"EOS rate A {_pct(s.get('eos_rate_a'))} / B {_pct(s.get('eos_rate_b'))}")
    if s.get("mean_score_a") is not None:
        lines.append(f"mean score ({short_name(s['score_source'])}) A {s['mean_score_a']:.3g} / "
                     f"B {s['mean_score_b']:.3g}")
    lines.append(verdict_line(s))
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    from rlaif.eval.evaluate import run_eval
    from rlaif.eval.options import EvalConfig

    flags: dict[str, Any] = {k: v for k in ("a", "b", "prompts", "out") if (v := getattr(args, k, None))}
    if args.rubric:
        flags["rubrics"] = args.rubric
    if args.reward:
        flags["rewards"] = args.reward
    if args.overwrite_flag:
        flags["overwrite"] = True
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
    p.add_argument("--out", metavar="DIR", help="output folder (same as out=DIR)")
    p.add_argument("--overwrite", dest="overwrite_flag", action="store_true",
                   help="start over instead of resuming (same as overwrite=true)")
    add_config_arguments(p, EvalConfig)
    p.set_defaults(func=_eval)
