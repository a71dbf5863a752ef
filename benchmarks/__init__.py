"""Benchmarks: ``python -m benchmarks`` runs them all (not part of the test suite)."""
