"""Horovod start-up: stall limits, cycle time and the priority of communication threads.

All three must be settled around hvd.init(): Horovod reads its environment when it starts
its background thread. Use `init_horovod()` instead of a bare `hvd.init()`.

Thread priority. Horovod's background thread (and, under mpirun, Open MPI's progress
threads) poll while a collective is in flight. With synchronous SGD the compute thread is
idle during that wait, but DaSGD overlaps the average with the next step's compute, so the
polling competes with the forward/backward pass for the cores (docs/dasgd.md). TOOLKIT_COMM_NICE=N
runs those threads at a lower scheduling priority (Linux `nice` is per thread; threads
they create inherit it) so that they get only the CPU compute leaves over. Off by default:
measured on 2 cores with ResNet-18 over a 900 Mbit/s link, nice 10 left DaSGD's step
unchanged (within noise) but slowed synchronous SGD, whose gradient allreduce then no longer
overlaps the backward pass, and nice 19 starved the transfer (the average took longer than
a step).
"""
import os


# Seconds one collective may take before the job is declared stalled. Generous by default:
# a large model over a slow link legitimately needs seconds per allreduce.
COMM_TIMEOUT_ENV = "TOOLKIT_COMM_TIMEOUT_S"
DEFAULT_COMM_TIMEOUT_S = 300.0

CYCLE_TIME_ENV = "HOROVOD_CYCLE_TIME"
QUIET_CYCLE_TIME_MS = "5"
# Horovod's background thread negotiates with every other rank once per cycle (default 1 ms)
# even when nothing is queued; measured here (ResNet-18, 2 ranks, 1 thread each), that idle
# negotiation took 0.07-0.11 s of CPU per 0.6 s step of `none` over Gloo (0.02-0.03 s at
# 5 ms) and 0.01 s over Open MPI. A longer cycle delays every collective's start by up to a
# cycle, which only strategies that never block on the average can ignore: `none` and
# `dasgd` with d >= 1 (their other collectives, the stop vote and the evaluation averages,
# are rare or not waited for at once). `local` blocks on an average every H steps (small CNN
# on digits, H = 1: 4.8k images/s at 1 ms, 3.1-3.8k at 5 ms) and `sync` negotiates its
# gradients during backward, so both keep Horovod's default.
COMM_NICE_ENV = "TOOLKIT_COMM_NICE"
DEFAULT_COMM_NICE = 0
_TASKS = "/proc/self/task"
_comm_threads = set()  # thread ids hvd.init() started (filled by init_horovod)


def comm_timeout_s(env=os.environ):
    raw = env.get(COMM_TIMEOUT_ENV)
    if raw is None or raw == "":
        return DEFAULT_COMM_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{COMM_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{COMM_TIMEOUT_ENV} must be > 0, got {raw!r}")
    return value


def apply_stall_defaults(env=os.environ):
    """Horovod's own stall detection, set only where the user has not chosen.

    Horovod reads these when hvd.init() starts its background thread, so call this BEFORE
    hvd.init() for it to take effect in this process (it also reaches child processes).
    The warning comes early and names the tensors each rank is missing; the shutdown is a
    backstop behind the strategies' own deadline.
    """
    timeout = comm_timeout_s(env)
    env.setdefault("HOROVOD_STALL_CHECK_TIME_SECONDS", str(int(min(30.0, timeout))))
    env.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", str(int(timeout + 30)))
    return env


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


def apply_cycle_time_default(strategy, delay=1, env=os.environ):
    """HOROVOD_CYCLE_TIME=5 (ms) for `none` and for `dasgd` with delay >= 1 or "auto" (which
    is >= 1), unless the user set it; returns the value Horovod will use (None: Horovod's
    own default)."""
    if strategy == "none" or (strategy == "dasgd" and (delay == "auto" or delay >= 1)):
        env.setdefault(CYCLE_TIME_ENV, QUIET_CYCLE_TIME_MS)
    return env.get(CYCLE_TIME_ENV)


def init_horovod(strategy=None, delay=1):
    """hvd.init() with the stall defaults (and, given the strategy and delay that will run,
    the cycle time) set first and Horovod's threads reniced after.

    Returns the horovod.torch module. Threads that existed before (the main thread,
    PyTorch's compute pool) keep their priority."""
    apply_stall_defaults()
    apply_cycle_time_default(strategy, delay)
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
