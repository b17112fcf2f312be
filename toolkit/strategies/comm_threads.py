"""Horovod start-up that keeps communication threads off the compute cores.

Horovod's background thread (and, under mpirun, Open MPI's progress threads) poll while a
collective is in flight. With synchronous SGD the compute thread is idle during that wait,
but DaSGD overlaps the average with the next step's compute, so the polling competes with
the forward/backward pass for the cores (measured in the spec: it cost more than the
communication itself). TOOLKIT_COMM_NICE=N runs those threads at a lower scheduling
priority (Linux `nice` is per thread; threads they create inherit it) so that they get
only the CPU compute leaves over. Off by default: measured on 2 cores with ResNet-18 over
a 900 Mbit/s link, nice 10 left DaSGD's step unchanged (within noise) but slowed
synchronous SGD, whose gradient allreduce then no longer overlaps the backward pass, and
nice 19 starved the transfer (the average took longer than a step).
"""
import os

from .watchdog import apply_stall_defaults

CYCLE_TIME_ENV = "HOROVOD_CYCLE_TIME"
# Strategies with at most one collective per step, for which Horovod's negotiation latency
# (up to one cycle) is nothing next to a step. Horovod's background thread negotiates with
# every other rank once per cycle (default 1 ms) even when nothing is queued; measured here
# (ResNet-18, 2 ranks, 1 thread each, communication threads' CPU per 0.6 s step of `none`):
# Gloo 0.07-0.11 s at 1 ms vs 0.02-0.03 s at 5 ms; Open MPI 0.011 s at 1 ms.
# `sync` keeps Horovod's default: its gradient allreduces are negotiated during backward.
QUIET_STRATEGIES = ("none", "local", "dasgd")
QUIET_CYCLE_TIME_MS = "5"
COMM_NICE_ENV = "TOOLKIT_COMM_NICE"
DEFAULT_COMM_NICE = 0
_TASKS = "/proc/self/task"
_comm_threads = set()  # thread ids hvd.init() started (filled by init_horovod)


def comm_nice(env=os.environ):
    raw = env.get(COMM_NICE_ENV, "")
    if raw == "":
        return DEFAULT_COMM_NICE
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{COMM_NICE_ENV} must be an integer 0..19 (0 = leave Horovod's "
                         f"threads alone), got {raw!r}") from None
    if not 0 <= value <= 19:
        raise ValueError(f"{COMM_NICE_ENV} must be in 0..19, got {value}")
    return value


def _thread_ids():
    try:
        return set(os.listdir(_TASKS))
    except OSError:  # not Linux: nothing to renice
        return set()


def apply_cycle_time_default(strategy, env=os.environ):
    """HOROVOD_CYCLE_TIME=5 (ms) for the strategies in QUIET_STRATEGIES unless the user set
    it; returns the value Horovod will use (None: Horovod's own default)."""
    if strategy in QUIET_STRATEGIES:
        env.setdefault(CYCLE_TIME_ENV, QUIET_CYCLE_TIME_MS)
    return env.get(CYCLE_TIME_ENV)


def init_horovod(strategy=None):
    """hvd.init() with the stall defaults (and, given the strategy that will run, the cycle
    time) set first and Horovod's threads reniced after.

    Returns the horovod.torch module. Threads that existed before (the main thread,
    PyTorch's compute pool) keep their priority."""
    apply_stall_defaults()
    apply_cycle_time_default(strategy)
    nice = comm_nice()
    before = _thread_ids()
    import horovod.torch as hvd
    hvd.init()
    _comm_threads.update(_thread_ids() - before)
    if nice:
        for tid in _comm_threads:
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            except OSError:  # the thread ended meanwhile, or no permission: not fatal
                pass
    return hvd


def communication_threads():
    """Ids (strings, as in /proc/self/task) of the threads hvd.init() started in this
    process: Horovod's background thread and the MPI/Gloo threads under it. Empty before
    init_horovod() or off Linux."""
    return set(_comm_threads)
