"""The judge's noise margin: the largest score margin at which its preference is no better than chance.

It comes from the ``noise_margin`` option, else from the table of margins measured for the embedded
judge below, else it is unknown. The pipeline reports pairs inside it and, with ``min_margin`` null,
drops them (`rlaif.dataset.pipeline.run_build`); the pair builder only sees the resulting margin.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from rlaif.dataset.options import BuildOptions

# Measured for the embedded judge (vllm, SmolLM2-135M-Instruct) with bench/judge_quality.py on the 90
# labelled pairs of bench/data/judge_pairs.jsonl, per rubric set with equal weights, keyed by `rubric_key`:
# the largest margin t such that the pairs whose |margin| < t (ties left out) agreed with the labels no
# better than chance (Wilson 95% interval contains 1/2; >= 10 pairs; t on a grid 0.005..0.3). Re-measure
# when a shipped rubric or the embedded model changes (helpfulness:logprob was near chance at every
# margin: no entry).
EMBEDDED_JUDGE_NOISE_MARGINS: dict[str, float] = {"answer_checks:rules+answer_likelihood:likelihood": 0.05}
MEASURED_SOURCE = "measured for the embedded judge on the labelled set bench/data/judge_pairs.jsonl with " \
                  "bench/judge_quality.py"


def rubric_key(rows: Sequence[dict], rubrics: Sequence[str]) -> str:
    """Sorted "name:method" of the rubrics joined by "+", from judgement rows (the noise table's key)."""
    methods = {row["rubric"]: row["method"] for row in rows}
    return "+".join(sorted(f"{rubric}:{methods.get(rubric, '?')}" for rubric in rubrics))


def judge_noise(options: BuildOptions, judge: str, key: str,
                measured: Mapping[str, float] = EMBEDDED_JUDGE_NOISE_MARGINS) -> tuple[float | None, str]:
    """The noise margin to report against, and where it came from (None: unknown for this judge).
    ``judge``: the run's judges, "engine:model" joined by "+"; ``key``: `rubric_key` of the run's rubrics;
    ``measured``: margins of the embedded judge by rubric key, which hold for equal rubric weights only."""
    from rlaif.models import is_embedded

    if getattr(options, "noise_margin", None) is not None:
        return options.noise_margin, "option noise_margin"
    judges = [part.split(":", 1)[-1] for part in judge.split("+") if part != "rules"]  # rules: no model
    names = [part.rsplit(":", 1)[0] for part in key.split("+")]
    equal = len({options.rubric_weights.get(name, 1.0) for name in names}) <= 1
    if judges and all(is_embedded(model) for model in judges) and key in measured and equal:
        return measured[key], MEASURED_SOURCE
    return None, ("unknown for this judge and rubric set: measure agreement against margin with `rlaif rubric "
                  "calibrate` and set noise_margin")
