"""Benchmarks: ``python -m benchmarks.engine`` (see README)."""
