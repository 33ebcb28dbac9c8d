"""Benchmarks of streamcqrs against a raw redis-py baseline measured in the same run."""
