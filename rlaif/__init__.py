"""rlaif: reinforcement learning from AI feedback.

A policy writes candidates, a judge scores them against editable rubrics, the scores become a
preference dataset, and integrated trainers (reward model, DPO) learn from it.
"""

__version__ = "0.1.0"
