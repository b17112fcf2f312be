"""`delay="auto"`: the smallest delay d with t_avg <= d * step, measured on the run itself.

t_avg is the time one round's allreduce takes (a blocking allreduce of a buffer of one
round's payload, timed a few times while nothing else is in flight); step is the median
time between two step() calls over the last steps, minus the time spent waiting on
communication in between. Rank 0 measures and decides, and broadcasts d so that every rank
uses the same value: the ranks' schedules of collectives must match. The first decision is
taken a few steps after the start, later ones when the training loop asks
(DaSGD.recheck_delay(), once per epoch in launch.train).
"""
import math
import statistics
import time
from collections import deque

import torch

FIRST_CHECK_AFTER = 4   # local steps (after warm-up) before the first decision: 3 intervals
STEP_WINDOW = 16        # step intervals kept for the median
PROBE_REPEATS = 3
DEFAULT_BOUNDS = (1, 8)


def check_delay(delay):
    """The delay option, wherever it is given (the run configuration, DaSGD, the scaling
    projection): an integer >= 0, or "auto"; returned as it is, else a one-line ValueError."""
    if delay != "auto" and (isinstance(delay, bool) or not isinstance(delay, int) or delay < 0):
        raise ValueError(f"delay must be an integer >= 0 or auto, got {delay!r}")
    return delay


def check_bounds(bounds):
    lo, hi = bounds
    for value in (lo, hi):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"delay bounds must be integers >= 1, got {bounds!r}")
    if lo > hi:
        raise ValueError(f"delay bounds must be (low, high) with low <= high, got {bounds!r}")
    return lo, hi


def choose_delay(avg_s, step_s, bounds=DEFAULT_BOUNDS):
    """Smallest integer d with avg_s <= d * step_s, within bounds."""
    lo, hi = bounds
    if step_s <= 0:
        return hi
    return max(lo, min(hi, math.ceil(avg_s / step_s - 1e-9)))


class StepClock:
    """Time between step() calls, without the time spent waiting on communication."""

    def __init__(self):
        self.intervals = deque(maxlen=STEP_WINDOW)
        self._last = None
        self._wait_at_last = 0.0

    def tick(self, comm_wait_s):
        now = time.perf_counter()
        if self._last is not None:
            self.intervals.append(max(0.0, now - self._last - (comm_wait_s -
                                                                self._wait_at_last)))
        self._last, self._wait_at_last = now, comm_wait_s

    def restart(self):
        """Forget the open interval (time spent outside training: evaluation, a probe)."""
        self._last = None

    def step_s(self):
        return statistics.median(self.intervals) if self.intervals else None


def probe_allreduce_s(strategy, numel, dtype):
    """Median seconds of a blocking sum of `numel` elements of `dtype` (all ranks), sent the
    way a round sends them."""
    from .low_precision import start_sum
    buf = torch.zeros(numel, dtype=dtype)
    times = []
    for _ in range(PROBE_REPEATS):
        start = time.perf_counter()
        handle = start_sum(strategy._hvd, buf, "dasgd.auto_delay.probe")
        strategy._wait(handle, "dasgd.auto_delay.probe")
        times.append(time.perf_counter() - start)
    strategy.comm_wait_s -= sum(times)  # a measurement, not training's waiting
    return statistics.median(times)


def decide_delay(strategy, numel, dtype, clock, bounds):
    """(d, avg_s, step_s) decided by rank 0 and received by every rank (collective)."""
    avg_s = probe_allreduce_s(strategy, numel, dtype)
    step_s = clock.step_s()
    chosen = choose_delay(avg_s, step_s if step_s is not None else 0.0, bounds)
    hvd = strategy._hvd
    values = torch.tensor([float(chosen), avg_s, step_s or 0.0], dtype=torch.float64)
    handle = hvd.broadcast_async_(values, root_rank=0, name="dasgd.auto_delay.decision")
    strategy._wait(handle, "dasgd.auto_delay.decision")
    clock.restart()
    d, avg_s, step_s = values.tolist()
    return int(d), avg_s, step_s
