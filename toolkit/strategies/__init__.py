"""Training strategies over Horovod, by name: none, sync, local and dasgd.

    from toolkit.job.startup import init_horovod
    from toolkit.strategies import make_strategy
    hvd = init_horovod("dasgd")
    strategy = make_strategy("dasgd", model, optimizer, period=1, delay=1)
    ... loss.backward(); strategy.step(); strategy.optimizer.zero_grad() ...
    strategy.synchronize_model()   # before evaluation and checkpoints

A strategy is a class taking (model, optimizer, **options); register it in STRATEGIES.
"""
from .base import Strategy
from .baselines import NoCommunication, SyncSGD
from .delayed_averaging import DaSGD, LocalSGD
from .watchdog import CommunicationError

STRATEGIES = {"none": NoCommunication, "sync": SyncSGD, "local": LocalSGD, "dasgd": DaSGD}
STRATEGY_NAMES = tuple(STRATEGIES)
# The options each strategy takes (make_strategy accepts all and passes on these).
_OPTIONS = {"none": (), "sync": (), "local": ("period", "warmup_steps"),
            "dasgd": ("period", "delay", "warmup_steps", "avg_dtype", "fragments")}


def make_strategy(name, model, optimizer, *, period=1, delay=1, warmup_steps=0,
                  avg_dtype="fp32", fragments=1):
    """Wrap `optimizer` (already built on `model`'s parameters) in the named strategy.

    Horovod must be initialised (toolkit.job.init() or init_horovod()). The model is
    broadcast from rank 0. `period`, `delay` (an integer or "auto"), `avg_dtype`
    ("fp32", "bf16", "fp16") and `fragments` apply to dasgd (period also to local),
    `warmup_steps` to both.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    given = {"period": period, "delay": delay, "warmup_steps": warmup_steps,
             "avg_dtype": avg_dtype, "fragments": fragments}
    return STRATEGIES[name](model, optimizer, **{k: given[k] for k in _OPTIONS[name]})


__all__ = ["STRATEGIES", "STRATEGY_NAMES", "Strategy", "NoCommunication", "SyncSGD", "DaSGD",
           "LocalSGD", "CommunicationError", "make_strategy"]
