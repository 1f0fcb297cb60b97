"""Verbs ``run``, ``generate``, ``judge``, ``build``: make a preference dataset.

    rlaif run      --prompts FILE --rubric R [--rubric R2 ...] --out DIR [key=value ...]
    rlaif generate --prompts FILE --out DIR
    rlaif judge    --candidates FILE --rubric R --out DIR
    rlaif build    --judgements FILE --out DIR [--labels DIR/review/labels.jsonl]

Flags are shorthands for config keys (``--prompts X`` is ``prompts=X``); everything else is a
``key=value`` override or a ``--config`` YAML key, listed in each verb's ``--help``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from typing import Any

from rlaif.config import add_config_arguments, load_config

DESCRIPTIONS = {
    "run": "generate -> judge -> build: a preference dataset from a prompt file (resumable; rerun the same "
           "command after a crash to continue)",
    "generate": "sample n candidate responses per prompt from the policy model -> DIR/candidates.jsonl",
    "judge": "judge candidates against rubrics with the judge model -> DIR/judgements.jsonl",
    "build": "judgements -> preference pairs DIR/preferences/{train,test}.jsonl, report.html, README.md",
}
JUDGE_INHERITS = ("\n\n`judge.*` options default to the policy's values (the judge is the policy unless you say "
                  "otherwise). With the policy's engine and model the engine is loaded once, so another judge.* "
                  "setting (batch_size, dtype, ...) would be ignored and is refused.")


def load_verb_config(cls: type, args: argparse.Namespace, inherit_judge: bool) -> Any:
    """`rlaif.config.load_config` with the verb's flags as the last layer; with ``inherit_judge``
    every judge.* key not given defaults to the policy's value."""
    flags = {key: value for key in ("prompts", "candidates", "judgements", "labels", "out")
             if (value := getattr(args, key, None))}
    if getattr(args, "rubric", None):
        flags["rubrics"] = args.rubric
    if getattr(args, "overwrite_flag", False):
        flags["overwrite"] = True
    return load_config(cls, args.config, args.overrides, flags=flags,
                       inherit={"judge": "policy"} if inherit_judge else None)


@dataclass(frozen=True)
class Verb:
    """One pipeline verb: its config, the `rlaif.dataset.pipeline` function it runs, what it prints."""

    name: str
    config: type
    entry: str  # the function of rlaif.dataset.pipeline taking the config
    inherit_judge: bool
    done: str  # printed at the end; {out} is the output folder


def run_verb(verb: Verb, args: argparse.Namespace) -> int:
    """Load the verb's config, run it, print where its outputs are."""
    from rlaif.dataset import pipeline

    cfg = load_verb_config(verb.config, args, inherit_judge=verb.inherit_judge)
    getattr(pipeline, verb.entry)(cfg)
    print(verb.done.format(out=cfg.out))
    return 0


def add_parsers(subparsers: Any) -> None:
    # Config classes live in rlaif.dataset.options, which imports only light modules (no torch/vllm at import).
    from rlaif.dataset.options import BuildConfig, GenerateConfig, JudgeConfig, RunConfig

    verbs = [Verb("run", RunConfig, "run_all", True,
                  "dataset: {out}/preferences/train.jsonl, {out}/preferences/test.jsonl\n"
                  "report:  {out}/report.html   card: {out}/README.md   manifest: {out}/manifest.json"),
             Verb("generate", GenerateConfig, "generate_only", False, "candidates: {out}/candidates.jsonl"),
             Verb("judge", JudgeConfig, "judge_only", False, "judgements: {out}/judgements.jsonl"),
             Verb("build", BuildConfig, "build_only", False,
                  "dataset: {out}/preferences/{{train,test}}.jsonl   report: {out}/report.html")]
    for spec in verbs:
        verb = spec.name
        p = subparsers.add_parser(verb, help=DESCRIPTIONS[verb], description=DESCRIPTIONS[verb])
        if verb in ("run", "generate"):
            p.add_argument("--prompts", metavar="FILE", help="prompt file (same as prompts=FILE)")
        if verb == "judge":
            p.add_argument("--candidates", metavar="FILE", help="candidates file (same as candidates=FILE)")
        if verb == "build":
            p.add_argument("--judgements", metavar="FILE", help="judgements file (same as judgements=FILE)")
            p.add_argument("--candidates", metavar="FILE", help="candidates that were judged "
                           "(default: candidates.jsonl beside the judgements)")
        if verb in ("run", "build"):
            p.add_argument("--labels", metavar="FILE", help="people's verdicts, DIR/review/labels.jsonl from "
                           "`rlaif review`, over the judge's (same as labels=FILE)")
        if verb in ("run", "judge", "build"):
            p.add_argument("--rubric", action="append", metavar="R",
                           help="rubric name or YAML path, or criteria:FIELD (each prompt's own criteria); repeat "
                                "for several (same as rubrics=[R,...])")
        p.add_argument("--out", metavar="DIR", help="output folder (same as out=DIR)")
        p.add_argument("--overwrite", dest="overwrite_flag", action="store_true",
                       help="start over instead of resuming (same as overwrite=true)")
        add_config_arguments(p, spec.config)
        if verb == "run":
            p.epilog += JUDGE_INHERITS
        p.set_defaults(func=partial(run_verb, spec))
