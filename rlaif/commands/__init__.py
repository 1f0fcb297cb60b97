"""The `rlaif` verbs: each module parses one group of verbs into a config and calls the layer below."""
