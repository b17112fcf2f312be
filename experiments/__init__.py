"""Benchmarks, studies and the emulated cluster: checkout only, not installed with the toolkit."""
