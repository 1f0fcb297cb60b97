"""Reward functions for the online-trainer tests (TRL-style signature)."""


def length_target(prompts, completions, **kwargs):
    """-|words - 8| / 8: highest for completions of 8 words (a target the policy can move towards)."""
    return [-abs(len(c.split()) - 8) / 8 for c in completions]


def short(prompts, completions, **kwargs):
    """Higher for shorter completions (in characters): -len / 100."""
    return [-len(c) / 100 for c in completions]


def none_every_third(prompts, completions, **kwargs):
    """None (masked) for every third completion, else its character length / 100."""
    return [None if i % 3 == 2 else len(c) / 100 for i, c in enumerate(completions)]


def wrong_length(prompts, completions, **kwargs):
    """One reward too few: a user error."""
    return [0.0] * (len(completions) - 1)


def raises(prompts, completions, **kwargs):
    raise RuntimeError("reward server down")


def flat_on_even_ids(prompts, completions, id, **kwargs):
    """1.0 for every completion of a prompt whose id ends in an even number (a group with no reward
    variance), else the completion's character length / 100."""
    return [1.0 if int(i[1:]) % 2 == 0 else len(c) / 100 for i, c in zip(id, completions)]


def constant(prompts, completions, **kwargs):
    """0.5 for every completion: no group has reward variance."""
    return [0.5] * len(completions)
