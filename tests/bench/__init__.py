"""Tests of the benchmark suite and the soak run (their machinery, never their timings)."""
