"""Benchmark scripts: each prints ratios against a baseline measured in the same run.

Run them as modules from the repository root, e.g. ``python -m benchmarks.engine_decode``.
"""
