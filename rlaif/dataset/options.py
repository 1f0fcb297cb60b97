"""Options of the pipeline verbs (`rlaif run | generate | judge | build`) and their range checks.

Each verb's config is a dataclass built from option groups; `rlaif.config.load_config` fills it
from defaults <- ``--config FILE.yaml`` <- ``key=value``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, Sequence

from rlaif.backends.base import BackendConfig, RayOptions
from rlaif.config import option
from rlaif.errors import UserError

STAGE_OUTPUTS = {
    "generate": ["candidates.jsonl"],
    "judge": ["judgements.jsonl"],
    "build": ["preferences", "sft", "report.html", "README.md"],
}
STAGES = list(STAGE_OUTPUTS)


# ----------------------------------------------------------------------------- configs
@dataclass
class CommonOptions:
    out: str = option("outputs/run", "output folder (created; a rerun resumes it)")
    seed: int = option(0, "run seed: per-prompt sampling seeds, judge seed and the train/test split derive from it")
    overwrite: bool = option(False, "start over: delete this command's outputs in --out first")
    progress: bool = option(True, "show progress bars")


@dataclass
class GenerateOptions:
    policy: BackendConfig = option(BackendConfig, "the policy model writing candidates")
    n: int = option(4, "candidates per prompt")
    temperature: float = option(0.8, "sampling temperature")
    top_p: float = option(1.0, "nucleus sampling p")
    max_tokens: int = option(256, "maximum new tokens per candidate")
    prompt_column: str = option("prompt", "column/field holding the prompt (string or messages) in dataset files")
    chunk_size: int = option(64, "prompts per engine call; each finished chunk is saved (resume granularity)")
    chunk_tokens: int = option(32768, "max prompt tokens x n per engine call (bigger calls batch better; "
                             "smaller ones save finished rows sooner)")
    ray: RayOptions = option(RayOptions, "the Ray cluster for policy.replicas > 1")


@dataclass
class JudgeOptions:
    rubrics: list[str] = option(lambda: ["helpfulness"],
                                "rubric names (rubrics/NAME.yaml) or paths; method comes from the file; "
                                "criteria:FIELD: each prompt's own criteria in its FIELD")
    judge: BackendConfig = option(BackendConfig,
                                   "the judge model (in `run`: every judge.* key defaults to the policy's)")
    verdict_retries: int = option(2, "verdict rubrics: re-asks of an invalid verdict before it is recorded as "
                                  "failed (HTTP retries are judge.* options)")
    judge_chunk_size: int = option(64, "candidates rows per judge call (resume granularity)")
    ray: RayOptions = option(RayOptions, "the Ray cluster for judge.replicas > 1")


@dataclass
class BuildOptions:
    """How judgements become pairs (`rlaif.dataset.pairs.build_pairs` takes any config holding these)."""

    rubric_weights: dict[str, float] = option(dict,
                                              "weight per rubric when combining normalised scores (default 1 each)")
    strategy: Literal["best-vs-worst", "all-pairs"] = option("best-vs-worst", "which pairs to take per prompt")
    min_margin: float | None = option(None, "minimum combined-score margin in [0,1] of a pair (ties always dropped); "
                                      "null: the judge's noise margin where known (noise_margin, or the measured "
                                      "figure for the embedded judge), else 0")
    truncated: Literal["reject_only", "drop", "keep"] = option(
        "reject_only", "candidates cut off at max_tokens (finish_reason 'length'): reject_only = never chosen, may be "
        "rejected; drop = never paired; keep = ranked like any other (unknown finish reasons count as complete)")
    noise_margin: float | None = option(None, "margin in [0,1] below which the judge's preference is no better than "
                                        "chance (from `rlaif rubric calibrate`); the report counts kept pairs "
                                        "inside it (null: the measured figure for the embedded judge, else unknown)")
    pairwise_min_confidence: float = option(0.6, "pairwise rubrics: keep a pair only if P(chosen better) >= this")
    require_position_consistent: bool = option(True, "pairwise rubrics: keep a pair only if both orders agreed")
    test_fraction: float = option(0.1, "share of prompts (with pairs) in preferences/test.jsonl")
    best_min_score: float = option(0.5, "sft/{train,test}.jsonl (best-of-n, for `rlaif train sft`): a prompt's best "
                                        "complete candidate is kept when its combined score in [0,1] is >= this")


@dataclass
class GenerateConfig(GenerateOptions, CommonOptions):
    prompts: str = option("", "prompt file: .jsonl (prompt|messages, id?), .txt, .json or .parquet")


@dataclass
class JudgeConfig(JudgeOptions, CommonOptions):
    candidates: str = option("", "candidates.jsonl from generate, or JSONL of {id?, prompt|messages, responses}")
    prompt_column: str = option("prompt", "column/field holding the prompt in the candidates file")


@dataclass
class LabelsOption:
    labels: str = option("", "people's verdicts from `rlaif review` (DIR/review/labels.jsonl): they override the "
                         "judge's on the pairs they decided (A/B: kept or flipped, or added; tie/both bad: dropped)")


@dataclass
class BuildConfig(LabelsOption, BuildOptions, CommonOptions):
    judgements: str = option("", "judgements.jsonl from judge")
    candidates: str = option("", "the candidates file that was judged (default: candidates.jsonl beside --judgements)")
    rubrics: list[str] = option(list, "rubrics to combine (default: every rubric in the judgements file)")


@dataclass
class RunConfig(LabelsOption, BuildOptions, JudgeOptions, GenerateOptions, CommonOptions):
    prompts: str = option("", "prompt file: .jsonl (prompt|messages, id?), .txt, .json or .parquet")


# ----------------------------------------------------------------------------- checks
def check_options(cfg: Any) -> None:
    """Range checks the type system cannot express; one-line UserErrors."""
    def bad(key: str, msg: str) -> UserError:
        return UserError(f"option '{key}': {msg}")

    if getattr(cfg, "n", 1) < 1:
        raise bad("n", f"must be >= 1, got {cfg.n}")
    if getattr(cfg, "max_tokens", 1) < 1:
        raise bad("max_tokens", f"must be >= 1, got {cfg.max_tokens}")
    if getattr(cfg, "temperature", 0.0) < 0:
        raise bad("temperature", f"must be >= 0, got {cfg.temperature}")
    if not 0 < getattr(cfg, "top_p", 1.0) <= 1:
        raise bad("top_p", f"must be in (0, 1], got {cfg.top_p}")
    if getattr(cfg, "verdict_retries", 0) < 0:
        raise bad("verdict_retries", f"must be >= 0, got {cfg.verdict_retries}")
    for key in ("chunk_size", "judge_chunk_size", "chunk_tokens"):
        if getattr(cfg, key, 1) < 1:
            raise bad(key, f"must be >= 1, got {getattr(cfg, key)}")
    if not 0 <= getattr(cfg, "test_fraction", 0.0) < 1:
        raise bad("test_fraction", f"must be in [0, 1), got {cfg.test_fraction}")
    for key in ("min_margin", "noise_margin", "best_min_score"):
        value = getattr(cfg, key, None)
        if value is not None and not 0 <= value <= 1:
            raise bad(key, f"must be in [0, 1] (a margin between scores normalised to [0, 1]), got {value}")
    if isinstance(cfg, (RunConfig, JudgeConfig)) and not cfg.rubrics:
        raise bad("rubrics", "give at least one rubric (--rubric NAME)")
    for name, w in getattr(cfg, "rubric_weights", {}).items():
        if w < 0:
            raise bad(f"rubric_weights.{name}", f"must be >= 0, got {w}")
    if isinstance(cfg, RunConfig):
        check_shared_engine(cfg.policy, cfg.judge)


def check_shared_engine(policy: BackendConfig, judge: BackendConfig) -> None:
    """A judge with the policy's engine and model shares the policy's loaded engine, so a judge.*
    setting that differs from the policy's would be silently ignored: refuse it."""
    if (judge.engine, judge.model) != (policy.engine, policy.model):
        return
    for f in fields(judge):
        mine, theirs = getattr(judge, f.name), getattr(policy, f.name)
        if mine != theirs:
            raise UserError(f"option 'judge.{f.name}': {mine!r} differs from policy.{f.name}={theirs!r}, but the "
                            f"judge shares the policy's engine (same engine and model, loaded once), so it would "
                            f"be ignored; set policy.{f.name} instead, or give the judge another model")


def check_weights(weights: dict[str, float], rubric_names: Sequence[str]) -> None:
    """Every weighted rubric must be one being combined (a typo would silently weigh nothing)."""
    for name in weights:
        if name not in rubric_names:
            raise UserError(f"option 'rubric_weights.{name}': '{name}' is not one of the rubrics "
                            f"({', '.join(rubric_names)})")
    if rubric_names and sum(weights.get(n, 1.0) for n in rubric_names) <= 0:
        raise UserError("option 'rubric_weights': the weights sum to 0")
