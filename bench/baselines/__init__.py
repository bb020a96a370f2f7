"""Baselines measured beside our pipeline in the same run: the bare pipe and the naive design."""
