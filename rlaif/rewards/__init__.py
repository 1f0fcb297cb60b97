"""Reward sources shared by online training and eval: a reward model, a judge rubric or a Python function.

Specs (``--reward SPEC``, repeatable; ``reward_weights`` gives one weight per spec, 1.0 each by default):
``rm:DIR`` (`rlaif.rewards.rm`), ``judge:RUBRIC`` (`rlaif.rewards.judge`) and ``python:FILE.py:FUNC``
(`rlaif.rewards.python_function`). `rlaif.rewards.specs` validates specs without loading anything,
`rlaif.rewards.load` loads them, `rlaif.rewards.combine` mixes their rewards by weight.
"""
