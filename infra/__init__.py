"""The local stack as real processes (no Docker), migrations and the `telemetry` CLI."""
