"""Training strategies over Horovod: none, sync, local and dasgd (see toolkit.dasgd)."""
from .base import Strategy
from .baselines import NoCommunication, SyncSGD
from .comm_threads import COMM_NICE_ENV, init_horovod
from .delayed_averaging import DaSGD, LocalSGD
from .watchdog import (COMM_TIMEOUT_ENV, CommunicationError, apply_stall_defaults,
                       comm_timeout_s)

STRATEGY_NAMES = ("none", "sync", "local", "dasgd")


def make_strategy(name, model, optimizer, *, period=1, delay=1, warmup_steps=0):
    """Wrap `optimizer` (already built on `model`'s parameters) in the named strategy.

    Horovod must be initialised (toolkit.dist.init()). The model is broadcast from rank 0.
    `period`, `delay` apply to dasgd (period also to local), `warmup_steps` to both.
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    for label, value, low in (("period", period, 1), ("delay", delay, 0),
                              ("warmup_steps", warmup_steps, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    # Effective for Horovod only if set before hvd.init(); still exported so child
    # processes and a re-initialised Horovod pick them up.
    apply_stall_defaults()
    if name == "none":
        return NoCommunication(model, optimizer)
    if name == "sync":
        return SyncSGD(model, optimizer)
    if name == "local":
        return LocalSGD(model, optimizer, period=period, warmup_steps=warmup_steps)
    return DaSGD(model, optimizer, period=period, delay=delay, warmup_steps=warmup_steps)


__all__ = ["init_horovod", "COMM_NICE_ENV", "Strategy", "NoCommunication", "SyncSGD", "DaSGD", "LocalSGD", "STRATEGY_NAMES",
           "make_strategy", "apply_stall_defaults", "comm_timeout_s", "COMM_TIMEOUT_ENV",
           "CommunicationError"]
