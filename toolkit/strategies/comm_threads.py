"""Horovod start-up that keeps communication threads off the compute cores.

Horovod's background thread (and, under mpirun, Open MPI's progress threads) poll while a
collective is in flight. With synchronous SGD the compute thread is idle during that wait,
but DaSGD overlaps the average with the next step's compute, so the polling competes with
the forward/backward pass for the cores (measured in the spec: it cost more than the
communication itself). Running those threads at the lowest scheduling priority (Linux
`nice` is per thread) gives them only the CPU that compute leaves over, which is enough
for a network-bound transfer, and any thread they create inherits the priority.
"""
import os

from .watchdog import apply_stall_defaults

COMM_NICE_ENV = "TOOLKIT_COMM_NICE"
DEFAULT_COMM_NICE = 19
_TASKS = "/proc/self/task"


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


def init_horovod():
    """hvd.init() with the stall defaults set first and Horovod's threads reniced after.

    Returns the horovod.torch module. Threads that existed before (the main thread,
    PyTorch's compute pool) keep their priority."""
    apply_stall_defaults()
    nice = comm_nice()
    before = _thread_ids()
    import horovod.torch as hvd
    hvd.init()
    if nice:
        for tid in _thread_ids() - before:
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            except OSError:  # the thread ended meanwhile, or no permission: not fatal
                pass
    return hvd
