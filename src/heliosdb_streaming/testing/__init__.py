"""Helpers for tests, benchmarks and demos that need real services on this machine."""
