"""Benchmarks: layer cost, communication hiding, scaling model."""
