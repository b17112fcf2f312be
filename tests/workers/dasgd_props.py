"""Multi-rank properties of the strategies; every rank saves what the test compares.

Usage: dasgd_props.py OUT_DIR   (under mpirun/horovodrun; 1 rank runs the n=1 check only)
"""
import os
import sys
import threading

import torch
from torch.utils.data import TensorDataset

from dasgd_common import (full_state, init_horovod, params, save_rank, tiny_model,
                          train_step)
from toolkit.strategies import make_strategy


def merge_property(hvd):
    """State right before and right after a delay-corrected merge (2 local steps late)."""
    model = tiny_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    strategy = make_strategy("dasgd", model, opt, period=3, delay=3)
    gen = torch.Generator().manual_seed(100 + hvd.rank())
    with torch.no_grad():  # ranks far apart, so the merge has a spread to shrink
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    for step in range(1, 6):  # round launched at step 3 is still in flight after step 5
        train_step(model, strategy, hvd.rank(), step)
    assert len(strategy._in_flight) == 1, "expected one round in flight"
    before = params(model)
    strategy.flush()
    return {"before": before, "after": params(model)}


def periodic_averaging(hvd, name, **kwargs):
    """The strategy with d = 0 next to a hand-written blocking average every 3 steps."""
    model, ref = tiny_model(1), tiny_model(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    strategy = make_strategy(name, model, opt, period=3, **kwargs)
    ref_strategy = make_strategy("none", ref, ref_opt)
    for step in range(1, 8):
        train_step(model, strategy, hvd.rank(), step)
        train_step(ref, ref_strategy, hvd.rank(), step)
        if step % 3 == 0:
            with torch.no_grad():
                tensors = list(ref.parameters()) + [b for b in ref.buffers()
                                                   if b.is_floating_point()]
                for i, t in enumerate(tensors):
                    t.copy_(hvd.allreduce(t, op=hvd.Average, name=f"ref.avg.{i}"))
    return {"strategy": full_state(model, opt), "reference": full_state(ref, ref_opt)}


def sync_equivalence(hvd):
    """H = 1, d = 0, plain SGD next to Horovod's DistributedOptimizer."""
    runs = {}
    for name, kwargs in (("dasgd", {"period": 1, "delay": 0}), ("sync", {})):
        model = tiny_model(2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        strategy = make_strategy(name, model, opt, **kwargs)
        for step in range(1, 7):
            train_step(model, strategy, hvd.rank(), step)
        runs[name] = params(model)
    return runs


def whole_epochs(hvd):
    """3 epochs over 53 samples (uneven shards) per configuration, evaluated every epoch."""
    from toolkit.data.sharding import shard_loader
    gen = torch.Generator().manual_seed(7)
    data = TensorDataset(torch.randn(53, 1, 6, 6, generator=gen),
                         torch.randint(0, 3, (53,), generator=gen))
    configs = {"dasgd_h1_d1": ("dasgd", {}), "dasgd_h2_d1_w3": ("dasgd", {"period": 2,
                                                                          "warmup_steps": 3}),
               "dasgd_h1_d2": ("dasgd", {"delay": 2}), "dasgd_h3_d2": ("dasgd", {"period": 3,
                                                                                "delay": 2}),
               "local_h2": ("local", {"period": 2}), "sync": ("sync", {}), "none": ("none", {})}
    out = {}
    for label, (name, kwargs) in configs.items():
        model = tiny_model(3)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        strategy = make_strategy(name, model, opt, **kwargs)
        states = []
        for epoch in range(3):
            for x, y in shard_loader(data, 4, hvd.rank(), hvd.size(), seed=0, epoch=epoch,
                                     train=True):
                strategy.optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                strategy.step()
            strategy.synchronize_model()
            states.append(full_state(model, strategy.optimizer))
        out[label] = {"states": states, "steps": strategy.steps_done}
    return out


def fused_relaunch(hvd):
    """The merge that also writes the next round's buffers (d a multiple of H) next to
    separate merge and snapshot passes: the trajectories must be identical."""
    from toolkit.strategies import DaSGD
    out = {}
    for period, delay in ((1, 1), (1, 2), (2, 2), (2, 4)):
        runs = []
        for fuse in (True, False):
            model = tiny_model(5)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            strategy = make_strategy("dasgd", model, opt, period=period, delay=delay)
            strategy.fuse_relaunch = fuse
            fused_merges = 0
            merge = strategy._merge

            def counting_merge(rnd, relaunch=False, merge=merge):
                nonlocal fused_merges
                fused_merges += relaunch
                return merge(rnd, relaunch=relaunch)

            strategy._merge = counting_merge
            for step in range(1, 9):
                train_step(model, strategy, hvd.rank(), step)
            strategy.flush()
            runs.append({"params": params(model), "fused_merges": fused_merges})
        assert isinstance(strategy, DaSGD)
        out[f"h{period}_d{delay}"] = runs
    return out


def single_rank():
    """n = 1: DaSGD must be bit-for-bit plain training."""
    model, ref = tiny_model(4), tiny_model(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    strategy = make_strategy("dasgd", model, opt, period=2, delay=1)
    for step in range(1, 8):
        train_step(model, strategy, 0, step)
        from dasgd_common import batch
        x, y = batch(0, step)
        ref_opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        ref_opt.step()
    strategy.synchronize_model()
    return {"strategy": full_state(model, opt), "reference": full_state(ref, ref_opt)}


def main(out_dir):
    hvd = init_horovod()
    if hvd.size() == 1:
        results = {"single": single_rank()}
    else:
        results = {"merge": merge_property(hvd),
                   "local": periodic_averaging(hvd, "local"),
                   "dasgd_d0": periodic_averaging(hvd, "dasgd", delay=0),
                   "sync_eq": sync_equivalence(hvd),
                   "fused_relaunch": fused_relaunch(hvd),
                   "epochs": whole_epochs(hvd)}
    results["size"] = hvd.size()
    results["thread_nice"] = {int(t): os.getpriority(os.PRIO_PROCESS, int(t))
                              for t in os.listdir("/proc/self/task")}
    results["main_tid"] = threading.get_native_id()
    save_rank(out_dir, hvd.rank(), results)


if __name__ == "__main__":
    main(sys.argv[1])
