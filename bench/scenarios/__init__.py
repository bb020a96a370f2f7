"""Benchmark scenarios: each module has `run(stack, options) -> report` and `summary(report)`."""

SCENARIOS = (
    "smoke",
    "ingest",
    "pipeline",
    "storage",
    "jobs",
    "reads",
    "notifier",
    "edge",
    "drain",
    "ingest_front",
    "failover",
)
