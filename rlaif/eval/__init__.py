"""Evaluation: win rates of two policies by judges and rewards, with intervals, and policy KL."""
