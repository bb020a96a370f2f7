"""The fleet simulator, load generators, benchmark scenarios and their reports."""
