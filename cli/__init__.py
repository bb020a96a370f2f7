"""The `telemetry` command: the one place that imports both the stack (infra) and the
benchmarks (bench)."""
