"""Shared pieces of the DaSGD test workers: a tiny BN network, per-(rank, step) batches,
and flattening a rank's whole training state for comparison in the test process."""
import os

import torch
from torch import nn


def init_horovod():
    from toolkit.job.startup import init_horovod
    hvd = init_horovod()  # stall settings before hvd.init(), Horovod's threads reniced
    torch.set_num_threads(1)
    return hvd


def tiny_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))


def batch(rank, step, seed=0, n=8):
    """A batch that depends only on (seed, rank, step): reruns and resumes see the same."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + step)
    return torch.randn(n, 1, 6, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


# DEVICE_TIME_MS set: gradients come from the device-time surrogate of the step benchmarks
# (experiments/bench/device_time.py) instead of the model's real backward.
DEVICE_TIME_MS = os.environ.get("DEVICE_TIME_MS")


def train_step(model, strategy, rank, step, seed=0):
    x, y = batch(rank, step, seed)
    strategy.optimizer.zero_grad()
    if DEVICE_TIME_MS is not None:
        if not hasattr(model, "device_time_installed"):
            from experiments.bench.device_time import device_time_forward
            device_time_forward(model, float(DEVICE_TIME_MS) / 1000)
            model.device_time_installed = True
        model(x).backward()
    else:
        nn.functional.cross_entropy(model(x), y).backward()
    strategy.step()


def params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def full_state(model, optimizer):
    """Parameters, every buffer and the floating optimizer state, as one float64 vector."""
    from toolkit.strategies.base import float_optimizer_state
    parts = [t.detach().reshape(-1).double() for t in model.state_dict().values()]
    parts += [t.detach().reshape(-1).double() for t in float_optimizer_state(optimizer)]
    return torch.cat(parts).clone()


def save_rank(out_dir, rank, results):
    os.makedirs(out_dir, exist_ok=True)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
