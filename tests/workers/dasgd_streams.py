"""DaSGD's options on 3 ranks: fragments, low-precision averages, a pinned automatic delay,
and synchronize_model() with optimizer state that only some ranks have.

Usage: dasgd_streams.py OUT_DIR   (under mpirun; every rank saves what the test compares)
"""
import sys

import torch
from torch import nn

from dasgd_common import full_state, init_horovod, params, save_rank, tiny_model, train_step
from toolkit.strategies import DaSGD, make_strategy
from toolkit.strategies.base import float_optimizer_state

STEPS = 9


class Quadratic(nn.Module):
    """Loss 0.5 |w - c_rank|^2 over parameters of several shapes: the gradient is w - c,
    so the test can replay the update rule in float64 without torch's autograd."""

    SHAPES = ((5, 3), (7,), (4, 4), (3,))

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(11)
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(s, generator=gen))
                                        for s in self.SHAPES)

    def loss(self, rank):
        gen = torch.Generator().manual_seed(1000 + rank)
        return sum(0.5 * (w - torch.randn(w.shape, generator=gen)).pow(2).sum()
                   for w in self.weights)


def fragment_rule(hvd, fragments, period, delay, lr=0.1):
    """Plain SGD on the quadratic with fragments; the trajectory, the targets and the
    fragment layout (flat element ranges) for the float64 replay in the test."""
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    strategy = DaSGD(model, opt, period=period, delay=delay, fragments=fragments)
    launches = []
    launch = strategy._launch

    def counting_launch(f, since, prepared=False, launch=launch):
        launches.append((strategy.steps_done, f))
        return launch(f, since, prepared=prepared)

    strategy._launch = counting_launch
    trajectory = [params(model)]
    for _ in range(4 * period + delay + 2):
        opt.zero_grad()
        model.loss(hvd.rank()).backward()
        strategy.step()
        trajectory.append(params(model))
    strategy.flush()
    starts = [0]
    for w in model.weights:
        starts.append(starts[-1] + w.numel())
    ranges = [[(starts[i] + a, starts[i] + b) for i, a, b in frag.pieces]
              for frag in strategy._fragments]
    gen = torch.Generator().manual_seed(1000 + hvd.rank())
    target = torch.cat([torch.randn(s, generator=gen).reshape(-1) for s in Quadratic.SHAPES])
    return {"trajectory": torch.stack(trajectory), "target": target, "ranges": ranges,
            "launches": launches, "lr": lr, "period": period, "delay": delay,
            "offsets": [frag.offset for frag in strategy._fragments]}


def equivalent_settings(hvd):
    """Trajectories that must be bit for bit the plain method's: F = 1, fp32, and an
    automatic delay whose bounds pin it (it still measures and broadcasts)."""
    out = {}
    for period, delay in ((1, 1), (2, 3)):
        runs = {}
        for label, kwargs in (("plain", {}), ("fragments1", {"fragments": 1}),
                              ("fp32", {"avg_dtype": "fp32"}),
                              ("auto_pinned", {"delay": "auto",
                                               "delay_bounds": (delay, delay)})):
            model = tiny_model(6)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            kwargs = {"delay": delay, **kwargs}
            strategy = DaSGD(model, opt, period=period, **kwargs)
            for step in range(1, STEPS + 1):
                train_step(model, strategy, hvd.rank(), step)
            strategy.flush()
            runs[label] = {"state": full_state(model, opt), "delay": strategy.delay,
                           "decisions": len(strategy.delay_log)}
        out[f"h{period}_d{delay}"] = runs
    return out


def low_precision(hvd):
    """One merge from identical states in fp32, bf16 and fp16 (H = 2, d = 1: the first
    round is launched at step 2 and merged at step 3), then a longer run."""
    out = {}
    for dtype in ("fp32", "bf16", "fp16"):
        model = tiny_model(7)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        strategy = DaSGD(model, opt, period=2, delay=1, avg_dtype=dtype)
        reference = torch.cat([t.detach().reshape(-1).double() for t in strategy.model_tensors])
        record = {"reference": reference}
        for step in range(1, 4):
            if step == 3:
                record["before_merge_step"] = _model_vector(strategy)
            train_step(model, strategy, hvd.rank(), step)
            if step == 2:
                record["snapshot"] = _model_vector(strategy)
        record["after_merge"] = _model_vector(strategy)
        for step in range(4, 13):
            train_step(model, strategy, hvd.rank(), step)
        strategy.flush()
        record["after_12"] = _model_vector(strategy)
        out[dtype] = record
    return out


def _model_vector(strategy):
    return torch.cat([t.detach().reshape(-1).double() for t in strategy.model_tensors]).clone()


class Branchy(nn.Module):
    """A trunk every rank uses and a branch only rank 0's batches take."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(8)
        self.trunk = nn.Linear(6, 3)
        self.branch = nn.Linear(6, 3)

    def forward(self, x, use_branch):
        out = self.trunk(x)
        return out + self.branch(x) if use_branch else out


def uneven_optimizer_state(hvd):
    """Momentum SGD where only rank 0 ever creates the branch's momentum buffers."""
    configs = {"none": ("none", {}), "sync": ("sync", {}), "local": ("local", {"period": 2}),
               "dasgd": ("dasgd", {}),
               "dasgd_opt_state": ("dasgd", {"average_optimizer_state": True}),
               "dasgd_bf16_f2": ("dasgd", {"avg_dtype": "bf16", "fragments": 2})}
    out = {}
    for label, (name, kwargs) in configs.items():
        model = Branchy()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if name == "dasgd" and kwargs:
            strategy = DaSGD(model, opt, **kwargs)
        else:
            strategy = make_strategy(name, model, opt, **kwargs)
        gen = torch.Generator().manual_seed(hvd.rank())
        for _ in range(4):
            x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
            strategy.optimizer.zero_grad()
            nn.functional.cross_entropy(model(x, hvd.rank() == 0), y).backward()
            strategy.step()
        states_before = len(float_optimizer_state(strategy.optimizer))
        branch_momentum = [strategy.optimizer.state.get(p, {}).get("momentum_buffer")
                           for p in model.branch.parameters()]
        strategy.synchronize_model()
        out[label] = {"states_before": states_before,
                      "branch_momentum_before": [None if m is None else m.clone()
                                                 for m in branch_momentum],
                      "state": full_state(model, strategy.optimizer)}
    return out


def main(out_dir):
    hvd = init_horovod()
    results = {"size": hvd.size(),
               "fragments": {f"f{f}_h{h}_d{d}": fragment_rule(hvd, f, h, d)
                             for f, h, d in ((3, 3, 2), (4, 2, 1), (2, 1, 0), (1, 2, 2))},
               "equivalent": equivalent_settings(hvd),
               "low_precision": low_precision(hvd),
               "uneven": uneven_optimizer_state(hvd)}
    save_rank(out_dir, hvd.rank(), results)


if __name__ == "__main__":
    main(sys.argv[1])
