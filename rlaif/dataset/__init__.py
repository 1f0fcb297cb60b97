"""The preference-data pipeline: generate -> judge -> build, with its report and card.

- ``options``: the verbs' configs (`RunConfig`, `GenerateConfig`, `JudgeConfig`, `BuildConfig`).
- ``pipeline``: the stages, each resumable, and the verbs ``run``, ``generate``, ``judge``, ``build``.
- ``engines``: the policy and judge engines, loaded lazily, one when they are the same model.
- ``generate``: sampling candidates chunk by chunk; prompt length checks.
- ``judge_context``: judge prompts checked against the judge's context.
- ``pairs``: judgements -> preference pairs and the train/test split by prompt.
- ``noise``: the judge's noise margin (option, or the embedded judge's measured table).
- ``manifest``, ``report``: ``manifest.json``, ``report.html`` and the dataset card.
"""
