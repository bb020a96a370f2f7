"""Faust stream processing: pings.v1 -> history, latest positions (and later aggregates)."""
