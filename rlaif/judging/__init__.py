"""Judging: rubric templates, lint, verdict parsers, judge methods and calibration."""
