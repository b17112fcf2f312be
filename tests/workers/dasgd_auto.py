"""delay="auto" on a model whose average is large next to its (emulated) compute.

Usage: dasgd_auto.py OUT_DIR   (under mpirun, 2 ranks; the test runs it on a fast and on a
rate-limited link). Every rank saves the d it uses after the first decision and after a
re-check, the decision log, and a checkpoint/resume comparison done within the job.
"""
import io
import sys
import time

import torch
from torch import nn

from dasgd_common import full_state, init_horovod, save_rank
from toolkit.strategies import DaSGD

STEP_S = 0.05            # emulated compute per step
CHECKPOINT, TOTAL = 6, 10


def build(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 4))  # 4 MB averaged
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, DaSGD(model, opt, delay="auto")


def train(model, strategy, rank, first, last):
    for step in range(first, last + 1):
        gen = torch.Generator().manual_seed(rank * 1000 + step)
        x, y = torch.randn(4, 1000, generator=gen), torch.randint(0, 4, (4,), generator=gen)
        strategy.optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        time.sleep(STEP_S)
        strategy.step()


def main(out_dir):
    hvd = init_horovod()
    rank = hvd.rank()
    model, strategy = build(seed=1)
    train(model, strategy, rank, 1, CHECKPOINT)
    first = strategy.delay
    strategy.synchronize_model()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "strategy": strategy.state_dict()}, buf)
    train(model, strategy, rank, CHECKPOINT + 1, TOTAL)
    strategy.flush()
    uninterrupted = full_state(model, strategy.optimizer)
    # resume from the checkpoint in fresh objects (another init): the same d, same steps
    resumed_model, resumed = build(seed=2)
    buf.seek(0)
    ckpt = torch.load(buf)
    resumed_model.load_state_dict(ckpt["model"])
    resumed.load_state_dict(ckpt["strategy"])
    resumed_delay = resumed.delay
    train(resumed_model, resumed, rank, CHECKPOINT + 1, TOTAL)
    resumed.flush()
    rechecked = strategy.recheck_delay()
    save_rank(out_dir, rank, {
        "first_delay": first, "resumed_delay": resumed_delay,
        "resumed_decisions": len(resumed.delay_log), "log": strategy.delay_log,
        "after_recheck": strategy.delay, "recheck_changed": rechecked,
        "uninterrupted": uninterrupted,
        "resumed": full_state(resumed_model, resumed.optimizer)})


if __name__ == "__main__":
    main(sys.argv[1])
