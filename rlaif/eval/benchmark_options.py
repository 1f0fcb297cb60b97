"""Options of ``rlaif eval --benchmark`` (light: no engine or torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.backends.base import BackendConfig
from rlaif.config import option
from rlaif.errors import UserError
from rlaif.eval.options import check_generation_options


@dataclass
class BenchmarkConfig:
    benchmark: str = option("", "benchmark JSONL of {id?, prompt|messages, answer, check?, tolerance?}, or a "
                                "shipped set by name (basic)")
    a: str = option("", "the model to score (alias, local folder, `rlaif train` output folder) or a candidates "
                        ".jsonl of the benchmark's prompts")
    b: str = option("", "optional second model: the paired difference A - B is reported with its interval")
    out: str = option("outputs/benchmark", "output folder (created; a rerun resumes it)")
    check: str = option("exact", "checker of rows without their own `check`: exact, regex, number or "
                                 "python:FILE.py:FUNC")
    tolerance: float = option(1e-6, "absolute tolerance of the number checker for rows without `tolerance`")
    max_tokens: int = option(256, "maximum new tokens per response")
    temperature: float = option(0.0, "sampling temperature (0: greedy, the default)")
    top_p: float = option(1.0, "nucleus sampling p")
    seed: int = option(0, "per-prompt sampling seeds (the same for both models)")
    policy: BackendConfig = option(BackendConfig, "engine settings (policy.model is set from a / b)")
    chunk_size: int = option(64, "prompts per generation call (resume granularity)")
    chunk_tokens: int = option(32768, "max prompt tokens x n per generation call")
    overwrite: bool = option(False, "start over: delete this command's outputs in --out first")
    progress: bool = option(True, "show progress bars")


def check_benchmark_options(cfg: BenchmarkConfig) -> None:
    """One-line UserErrors for what the types cannot say (nothing is read or written)."""
    if not cfg.benchmark:
        raise UserError("option 'benchmark': give a benchmark file (--benchmark FILE) or a shipped set (basic)")
    if not cfg.a:
        raise UserError("option 'a': give the model to score (--a MODEL)")
    check_generation_options(cfg, ("max_tokens", "chunk_size", "chunk_tokens"))
    if cfg.tolerance < 0:
        raise UserError(f"option 'tolerance': must be >= 0, got {cfg.tolerance}")
