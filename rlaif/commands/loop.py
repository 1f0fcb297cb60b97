"""Verb ``loop``: rounds of generate -> judge -> build -> train -> eval.

    rlaif loop --config configs/loop_demo.yaml --out DIR [key=value ...]

Rerun the same command after a crash to continue; finished rounds are skipped. Raise
``rounds`` and rerun to add rounds to a finished loop. Exit status 4: the reward-hacking guard
(``guard.benchmark``, rlaif/loop/guard.py) stopped the loop; its rounds so far are kept.
"""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = ("rounds of generate -> judge -> build -> train -> eval: each round's policy writes the next round's "
               "data; win rates against the starting and the previous policy on held-out prompts (resumable)")
EPILOG = ("\n\n`judge.*` options default to the policy's (the starting policy judges unless you say otherwise). "
          "Nested trainer options (dpo.*, grpo.*, rm.*, ppo.*) are those of `rlaif train`; the loop itself sets "
          "their data, model, out, prompts, reward, seed and overwrite in every round.")


def _run(args: argparse.Namespace) -> int:
    from rlaif.config import load_config, parse_overrides, read_yaml
    from rlaif.loop.config import LoopConfig, check_loop_config, given_keys
    from rlaif.loop.rounds import run_loop

    flags: dict[str, Any] = {k: v for k in ("prompts", "eval_prompts", "out") if (v := getattr(args, k, None))}
    if args.overwrite_flag:
        flags["overwrite"] = True
    cfg = load_config(LoopConfig, args.config, args.overrides, flags=flags, inherit={"judge": "policy"})
    given = given_keys(read_yaml(args.config) if args.config else {}) | given_keys(parse_overrides(args.overrides))
    check_loop_config(cfg, given)
    from rlaif.loop.guard import EXIT_GUARD

    manifest = run_loop(cfg)
    print(f"report: {cfg.out}/report.html   manifest: {cfg.out}/manifest.json")
    if manifest.get("stopped"):
        print(manifest["stopped"]["reason"])
        return EXIT_GUARD
    return 0


def add_parsers(subparsers: Any) -> None:
    from rlaif.config import add_config_arguments
    from rlaif.loop.config import LoopConfig

    p = subparsers.add_parser("loop", help=DESCRIPTION, description=DESCRIPTION)
    p.add_argument("--prompts", metavar="FILE", help="training prompt file (same as prompts=FILE)")
    p.add_argument("--eval-prompts", dest="eval_prompts", metavar="FILE",
                   help="held-out eval prompt file (same as eval_prompts=FILE)")
    p.add_argument("--out", metavar="DIR", help="output folder (same as out=DIR)")
    p.add_argument("--overwrite", dest="overwrite_flag", action="store_true",
                   help="start over: delete what an earlier loop wrote in --out (same as overwrite=true)")
    add_config_arguments(p, LoopConfig)
    p.epilog += EPILOG
    p.set_defaults(func=_run)
