"""Studies over many training runs: learning-rate check and convergence on digits (digits.py),
statistics refreshed every k-th step (stats_every.py); run them with python -m launch.study."""
