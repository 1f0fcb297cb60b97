"""Reward functions that misbehave, for tests/test_rewards.py."""

import math


def raises(prompts, completions, **kwargs):
    raise ZeroDivisionError("no reward today\nsecond line not shown")


def wrong_length(prompts, completions, **kwargs):
    return [1.0] * (len(completions) + 1)


def returns_string(prompts, completions, **kwargs):
    return ["high" for _ in completions]


def returns_bool(prompts, completions, **kwargs):
    return [True for _ in completions]


def returns_nan(prompts, completions, **kwargs):
    return [math.nan for _ in completions]


def returns_scalar(prompts, completions, **kwargs):
    return 1.0
