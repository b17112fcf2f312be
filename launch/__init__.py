"""Command-line entry points: python -m launch.train | bench_layer | bench_comm | scaling."""
