"""DaSGD (local SGD with delayed averaging) and the baselines it is compared with.

The implementation lives in toolkit.strategies; this module is the stable entry point:

    from toolkit.dasgd import make_strategy
    strategy = make_strategy("dasgd", model, optimizer, period=1, delay=1)
    ... loss.backward(); strategy.step(); strategy.optimizer.zero_grad() ...
    strategy.synchronize_model()   # before evaluation and checkpoints
"""
from toolkit.strategies import (COMM_NICE_ENV, COMM_TIMEOUT_ENV, init_horovod, STRATEGY_NAMES, DaSGD, LocalSGD,
                                NoCommunication, Strategy, SyncSGD, apply_stall_defaults,
                                comm_timeout_s, make_strategy)

__all__ = ["make_strategy", "init_horovod", "COMM_NICE_ENV", "DaSGD", "LocalSGD", "SyncSGD", "NoCommunication", "Strategy",
           "STRATEGY_NAMES", "apply_stall_defaults", "comm_timeout_s", "COMM_TIMEOUT_ENV"]
