"""Training strategies over Horovod, by name: none, sync, local and dasgd.

    from toolkit.job.startup import init_horovod
    from toolkit.strategies import make_strategy
    hvd = init_horovod("dasgd")
    strategy = make_strategy("dasgd", model, optimizer, period=1, delay=1)
    ... loss.backward(); strategy.step(); strategy.optimizer.zero_grad() ...
    strategy.synchronize_model()   # before evaluation and checkpoints

A strategy is a class taking (model, optimizer, *, option=default, ...); register it in
STRATEGIES.
"""
from .base import Strategy
from .baselines import NoCommunication, SyncSGD
from .delayed_averaging import DaSGD, LocalSGD
from .watchdog import CommunicationError

# The strategy registry: the --strategy choices and their help come from it.
STRATEGIES = {"none": NoCommunication, "sync": SyncSGD, "local": LocalSGD, "dasgd": DaSGD}
STRATEGY_NAMES = tuple(STRATEGIES)


def make_strategy(name, model, optimizer, **options):
    """Wrap `optimizer` (already built on `model`'s parameters) in the named strategy.

    Horovod must be initialised (toolkit.job.init() or init_horovod()). The model is
    broadcast from rank 0. `options` may hold any option of any strategy (period, delay (an
    integer or "auto"), warmup_steps, avg_dtype, fragments, ...): the named strategy gets
    those its class declares (Strategy.options(): the keyword-only parameters of its
    __init__, with their defaults there), the others are dropped.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    known = {option for cls in STRATEGIES.values() for option in cls.options()}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"make_strategy: no strategy takes the option(s) {', '.join(unknown)}")
    cls = STRATEGIES[name]
    return cls(model, optimizer, **{k: v for k, v in options.items() if k in cls.options()})


__all__ = ["STRATEGIES", "STRATEGY_NAMES", "Strategy", "NoCommunication", "SyncSGD", "DaSGD",
           "LocalSGD", "CommunicationError", "make_strategy"]
