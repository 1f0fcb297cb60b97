"""Verbs ``rlaif train rm|dpo|sft|grpo|rloo|ppo`` and ``rlaif rm score``.

    rlaif train rm  --data outputs/run1 --model smollm2-135m --out outputs/rm  [--config F] [k=v ...]
    rlaif train dpo --data outputs/run1 --model smollm2-135m --out outputs/dpo beta=0.1 loss_type=ipo
    rlaif train sft --data chats.jsonl --model smollm2-135m --out outputs/sft  (or --data outputs/run1: its sft/)
    rlaif rm score  --model outputs/rm --data pairs.jsonl [--out scores.jsonl]
    rlaif train grpo|rloo|ppo --prompts FILE --model M --reward SPEC [--reward SPEC2 ...] --out DIR [k=v ...]

Multi-GPU: ``accelerate launch -m rlaif.cli train dpo ...`` (same options).
"""

from __future__ import annotations

import argparse
from typing import Any

from rlaif.errors import UserError


def _train_config(args: argparse.Namespace, cls: type, verb: str, required: tuple[str, ...] = ("data", "out")) -> Any:
    """Defaults <- --config YAML <- key=value <- --data/--model/--out/--overwrite, all type-checked.
    A missing required flag is reported here, before torch and transformers are imported (seconds)."""
    from rlaif.config import load_config, merge

    cfg = load_config(cls, args.config, args.overrides)
    flags = {key: getattr(args, key) for key in ("data", "model", "out") if getattr(args, key, None) is not None}
    if getattr(args, "overwrite_flag", False):
        flags["overwrite"] = True
    cfg = merge(cfg, flags, source="command line: ")
    if not all(getattr(cfg, key) for key in required):
        raise UserError(f"{verb}: {' and '.join('--' + key for key in required)} are required")
    return cfg


def _run_rm(args: argparse.Namespace) -> int:
    from rlaif.train.config import RMConfig

    cfg = _train_config(args, RMConfig, "train rm")
    from rlaif.train.rm import train_rm

    train_rm(cfg)
    return 0


def _run_dpo(args: argparse.Namespace) -> int:
    from rlaif.train.config import DPOConfig

    cfg = _train_config(args, DPOConfig, "train dpo")
    from rlaif.train.dpo import train_dpo

    train_dpo(cfg)
    return 0


def _run_sft(args: argparse.Namespace) -> int:
    from rlaif.train.config import SFTConfig

    cfg = _train_config(args, SFTConfig, "train sft")
    from rlaif.train.sft import train_sft

    train_sft(cfg)
    return 0


def _run_online(args: argparse.Namespace) -> int:
    from rlaif.config import load_config
    from rlaif.train.online.config import CONFIGS

    flags: dict[str, Any] = {key: getattr(args, key) for key in ("prompts", "model", "out")
                             if getattr(args, key) is not None}
    if args.reward:
        flags["reward"] = args.reward
    if args.overwrite_flag:
        flags["overwrite"] = True
    cfg = load_config(CONFIGS[args.trainer], args.config, args.overrides, flags=flags)
    from rlaif.train.online.trainer import train_online

    train_online(cfg)
    return 0


def _add_online_parsers(verbs: argparse._SubParsersAction) -> None:
    from rlaif.config import add_config_arguments
    from rlaif.train.online.config import CONFIGS

    texts = {"grpo": "policy by GRPO: k samples per prompt, group-normalised rewards (Shao et al. 2024)",
             "rloo": "policy by RLOO: k samples per prompt, leave-one-out baseline (Ahmadian et al. 2024)",
             "ppo": "policy by PPO with a value model and GAE (N+ implementation details, Huang et al. 2024)"}
    for name, cls in CONFIGS.items():
        p = verbs.add_parser(name, help=texts[name], description=texts[name] + ". Rollouts come from a live "
                             "engine (vllm or hf) whose weights follow the policy after every update.")
        p.add_argument("--prompts", help="prompt file (JSONL with prompt or messages, TXT, parquet); same as prompts=")
        p.add_argument("--model", help="starting policy: smollm2-135m, a local folder or a hub id; same as model=")
        p.add_argument("--reward", action="append", metavar="SPEC",
                       help="reward: rm:DIR (an `rlaif train rm` output), judge:RUBRIC (direct RLAIF, judge.* "
                            "options pick the engine), python:FILE.py:FUNC (FUNC(prompts, completions, "
                            "**columns) -> list[float | None]); repeat to mix (reward_weights=[...])")
        p.add_argument("--out", help="output folder (final policy, checkpoints, metrics, rollouts); same as out=")
        p.add_argument("--overwrite", dest="overwrite_flag", action="store_true",
                       help="start over: delete what an earlier run wrote in --out (same as overwrite=true)")
        add_config_arguments(p, cls)
        p.set_defaults(func=_run_online)


def _run_score(args: argparse.Namespace) -> int:
    from rlaif.train.config import ScoreConfig

    cfg = _train_config(args, ScoreConfig, "rm score", required=("model", "data"))
    from rlaif.train.score import score_file

    score_file(cfg)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from rlaif.config import add_config_arguments
    from rlaif.train.config import DPOConfig, RMConfig, ScoreConfig, SFTConfig

    train = sub.add_parser("train", help="train a reward model or a policy (on preferences: rm, dpo; on chats: sft; "
                                               "online RL: grpo, rloo, ppo)")
    verbs = train.add_subparsers(dest="trainer", metavar="TRAINER")
    pairs = "folder with preferences/{train,test}.jsonl (an `rlaif run` output) or {train,test}.jsonl; same as data="
    chats = ("messages or prompt/completion JSONL, a folder with {train,test}.jsonl, or an `rlaif run` output "
             "(its sft/{train,test}.jsonl: the best candidate per prompt); same as data=")
    for name, cls, func, text, data_help in (
        ("rm", RMConfig, _run_rm, "reward model: scalar head on a causal LM, Bradley-Terry loss", pairs),
        ("dpo", DPOConfig, _run_dpo, "policy by direct preference optimisation (sigmoid/ipo/hinge/robust)", pairs),
        ("sft", SFTConfig, _run_sft, "policy by supervised fine-tuning on chats (loss on assistant tokens, "
                                     "packed rows)", chats),
    ):
        p = verbs.add_parser(name, help=text, description=text)
        p.add_argument("--data", help=data_help)
        p.add_argument("--model", help="base model: smollm2-135m, a local folder or a hub id; same as model=")
        p.add_argument("--out", help="output folder (final model, checkpoints, logs); same as out=")
        p.add_argument("--overwrite", dest="overwrite_flag", action="store_true",
                       help="start over: delete what an earlier run wrote in --out (same as overwrite=true)")
        add_config_arguments(p, cls)
        p.set_defaults(func=func)
    _add_online_parsers(verbs)

    rm = sub.add_parser("rm", help="use a trained reward model")
    rm_verbs = rm.add_subparsers(dest="rm_verb", metavar="VERB")
    p = rm_verbs.add_parser("score", help="score (prompt, response) pairs with a reward model",
                            description="Reads JSONL lines with prompt (string or messages) and response, "
                            "or preference pairs (chosen/rejected); writes each line back with 'score' "
                            "(or reward_chosen/reward_rejected, plus the pairwise accuracy on stderr).")
    p.add_argument("--model", help="reward model folder (output of `rlaif train rm`); same as model=")
    p.add_argument("--data", help="JSONL file to score; same as data=")
    p.add_argument("--out", help="output JSONL (default: stdout); same as out=")
    add_config_arguments(p, ScoreConfig)
    p.set_defaults(func=_run_score)
