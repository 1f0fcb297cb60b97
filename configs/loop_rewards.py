"""Verifiable rewards for `rlaif loop` with trainer=grpo (TRL's reward-function signature).

    rlaif loop --config configs/loop_verifiable.yaml --out outputs/loop-verifiable
"""


def brief(prompts, completions, **kwargs):
    """-characters / 100 for a non-empty answer, -1 for an empty one: shorter is better, but saying
    nothing is not an answer. A 135M model learns to stop earlier in a few GRPO steps."""
    return [-len(c) / 100 if c.strip() else -1.0 for c in completions]
