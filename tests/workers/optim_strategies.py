"""AdamW (with gradient clipping, label smoothing and bf16 autocast) under each strategy on
the ranks of one job. Prints `ok <strategy>` per strategy whose checks hold:
sync keeps the ranks identical after every step (clipping sees the averaged gradient);
none, local and dasgd keep Adam's moments local (they differ between ranks) and
synchronize_model() leaves one model and one optimizer state on every rank."""
import sys

import torch
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from dasgd_common import batch, init_horovod, params, tiny_model  # noqa: E402

from toolkit.optim import build_optimizer  # noqa: E402
from toolkit.precision import autocast  # noqa: E402
from toolkit.strategies import make_strategy  # noqa: E402
from toolkit.strategies.base import float_optimizer_state  # noqa: E402

STEPS = 4


def gathered(hvd, tensor):
    return hvd.allgather(tensor.reshape(1, -1), name=f"check.{gathered.calls}").unbind(0)


gathered.calls = 0


def same_on_all_ranks(hvd, tensor):
    gathered.calls += 1
    rows = gathered(hvd, tensor)
    return all(torch.equal(rows[0], row) for row in rows[1:])


def adam_moments(optimizer):
    return torch.cat([t.reshape(-1) for t in float_optimizer_state(optimizer)])


def run(hvd, name):
    model = tiny_model(seed=hvd.rank())  # different starts: the strategy broadcasts rank 0's
    optimizer = build_optimizer(model, "adamw", lr=0.01, weight_decay=0.05,
                                betas=(0.8, 0.99), grad_clip=0.5)
    strategy = make_strategy(name, model, optimizer, period=2, delay=1)
    assert same_on_all_ranks(hvd, params(model)), f"{name}: not broadcast"
    start = params(model)
    for step in range(STEPS):
        x, y = batch(hvd.rank(), step)
        strategy.optimizer.zero_grad()
        with autocast("bf16", x.device):
            loss = nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        assert torch.isfinite(loss), f"{name}: loss {loss}"
        loss.backward()
        strategy.step()
        if name == "sync":
            assert same_on_all_ranks(hvd, params(model)), f"sync: ranks differ at {step}"
    assert not torch.equal(start, params(model)), f"{name}: no update"
    if name != "sync":
        assert not same_on_all_ranks(hvd, adam_moments(strategy.optimizer)), \
            f"{name}: Adam moments were averaged during training"
    strategy.synchronize_model()
    assert same_on_all_ranks(hvd, params(model)), f"{name}: models differ after sync"
    assert same_on_all_ranks(hvd, adam_moments(strategy.optimizer)), f"{name}: state differs"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    return f"ok {name}"


def main():
    hvd = init_horovod()
    for name in ("none", "sync", "local", "dasgd"):
        line = run(hvd, name)
        if hvd.rank() == 0:
            print(line, flush=True)


if __name__ == "__main__":
    main()
