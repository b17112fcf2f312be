"""Checkpoint in the middle of a DaSGD round and resume, or run straight through.

Usage: dasgd_ckpt.py full|first|resume OUT_DIR
  full:   14 steps, synchronize_model() at the checkpoint/eval points 7 and 11
  first:  steps 1..7, synchronize_model(), rank 0 writes OUT_DIR/ckpt.pt
  resume: fresh objects (another init), load ckpt.pt on every rank, steps 8..14
Each rank of full/resume saves its final state to OUT_DIR/<mode>/rank<r>.pt.
"""
import os
import sys

import torch

from dasgd_common import full_state, init_horovod, save_rank, tiny_model, train_step
from toolkit.strategies import make_strategy

TOTAL, CHECKPOINT, EVAL = 14, 7, 11  # launches at 6, 10, 14 (W=2, H=4): 7 is mid-round


def build(seed):
    model = tiny_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    strategy = make_strategy("dasgd", model, opt, period=4, delay=2, warmup_steps=2)
    return model, strategy


def run(model, strategy, rank, first, last):
    for step in range(first, last + 1):
        for group in strategy.optimizer.param_groups:  # schedule indexed by global step
            group["lr"] = 0.05 * (1 - step / 20)
        train_step(model, strategy, rank, step)
        if step in (CHECKPOINT, EVAL):
            strategy.synchronize_model()


def main(mode, out_dir):
    hvd = init_horovod()
    rank = hvd.rank()
    path = os.path.join(out_dir, "ckpt.pt")
    if mode == "full":
        model, strategy = build(seed=5)
        run(model, strategy, rank, 1, TOTAL)
    elif mode == "first":
        model, strategy = build(seed=5)
        run(model, strategy, rank, 1, CHECKPOINT)
        if rank == 0:
            torch.save({"model": model.state_dict(), "strategy": strategy.state_dict()}, path)
        return
    elif mode == "resume":
        model, strategy = build(seed=99)  # a different init: everything must come from disk
        ckpt = torch.load(path)
        model.load_state_dict(ckpt["model"])
        strategy.load_state_dict(ckpt["strategy"])
        assert strategy.steps_done == CHECKPOINT, strategy.steps_done
        run(model, strategy, rank, strategy.steps_done + 1, TOTAL)
    else:
        raise ValueError(f"mode must be full, first or resume, got {mode!r}")
    save_rank(os.path.join(out_dir, mode), rank,
              {"state": full_state(model, strategy.optimizer), "step": strategy.steps_done,
               "rounds": strategy.rounds_launched, "in_flight": len(strategy._in_flight)})
    # A rank that exits with an average in flight shuts Horovod down under a peer that may
    # not have submitted it yet: every rank completes its collectives before leaving.
    strategy.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
