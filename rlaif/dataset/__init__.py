"""The preference-data pipeline: generate -> judge -> build, with its report and card."""
