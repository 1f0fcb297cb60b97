"""A reward file that fails when imported."""

raise RuntimeError("missing dependency")


def length(prompts, completions, **kwargs):
    return [0.0 for _ in completions]
