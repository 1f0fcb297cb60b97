"""Reward sources (reward model, judge rubric, python function) shared by online training and eval."""
