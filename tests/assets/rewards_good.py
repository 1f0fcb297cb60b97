"""Reward functions for tests/test_rewards.py (TRL-style signature)."""

CALLS = []  # every call's keyword names, so a test can check what was passed


def length(prompts, completions, **kwargs):
    """Number of words in each completion."""
    CALLS.append(sorted(kwargs))
    return [float(len(c.split())) for c in completions]


def target_match(prompts, completions, target, id, **kwargs):
    """1.0 where the completion equals the row's ``target`` column, else 0; ints are fine too."""
    return [1 if c == t else 0 for c, t in zip(completions, target)]


def none_for_empty(prompts, completions, **kwargs):
    """None (masked) for an empty completion."""
    return [None if not c.strip() else 0.5 for c in completions]


def echo_prompt_count(prompts, completions, **kwargs):
    """How many messages each prompt has (checks prompts are chats)."""
    return [len(p) for p in prompts]


NOT_A_FUNCTION = 3
