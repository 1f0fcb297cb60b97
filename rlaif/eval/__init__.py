"""`rlaif eval`: how often A's responses beat B's, judged by rubrics and rewards, and policy KL.

- ``options``: `EvalConfig` and its checks (light, for the CLI and the loop's config).
- ``plan``: the sides, prompts, rubrics and reward specs, checked before anything is written.
- ``sampling``: a model side's responses (resumable) and the pairs A_k against B_k.
- ``votes``: each rubric's and reward's vote on each pair (resumable).
- ``summary``: the majority outcome, win rates and the rest of ``eval.json`` / ``eval.jsonl``.
- ``winrate``: the statistics (interval by prompt, length-controlled win rate).
- ``report``: ``report.html`` and the table the command prints.
- ``evaluate``: `run_eval`, the stages in order.
- ``kl``: KL(pi || pi_ref) on sampled responses, for the loop.
- ``benchmark``: `rlaif eval --benchmark`, accuracy against reference answers (``benchmark_options``,
  ``benchmark_check``: rows and checkers, ``benchmark_stats``: Wilson and paired intervals, ``benchmark_report``).
"""
