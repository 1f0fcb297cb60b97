"""`rlaif loop`: rounds of generate -> judge -> build -> train -> eval.

- ``config``: `LoopConfig` (the driven verbs' option groups) and its checks.
- ``prompts``: the held-out eval prompts and each round's seeded slice of the training prompts.
- ``rounds``: `run_loop`, one round's stages, settings and resume.
- ``report``: ``report.html`` and the win-rate table across rounds.
"""
