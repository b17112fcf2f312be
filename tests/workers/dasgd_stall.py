"""A job that stalls on purpose at step 3.

skip: rank 1 submits a different collective: it jumps to synchronize_model() (a blocking
      average under another name) while rank 0 keeps training, so with dasgd rank 0's merge
      at step 4 waits for the average it launched at step 3. Neither collective can
      complete: both ranks must fail with an error naming the step.
die:  rank 1 exits abruptly (exit code 3) without a word to Horovod.
Usage: dasgd_stall.py skip|die dasgd|sync

Each rank prints `rank R step S at T` (T: time.time()) as it starts a step, and `rank R
failed at T` when the stall error reaches it, so that the test measures the stall from the
ranks' own progress instead of from the launch (whose start-up a loaded machine stretches).
A rank that failed prints the traceback and leaves with os._exit(1), as launch.train does
(toolkit/errors.py): a normal interpreter exit would wait in Horovod's shutdown for the
collective that never completes, until Horovod's own stall shutdown 30 s later.
"""
import os
import sys
import time
import traceback

import torch

from dasgd_common import init_horovod, tiny_model, train_step
from toolkit.strategies import make_strategy


def main(mode, name):
    hvd = init_horovod()
    rank = hvd.rank()
    model = tiny_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    strategy = make_strategy(name, model, opt)
    try:
        for step in range(1, 9):
            print(f"rank {rank} step {step} at {time.time():.3f}", flush=True)
            if rank == 1 and step == 3:
                if mode == "die":
                    os._exit(3)
                strategy.synchronize_model()
            train_step(model, strategy, rank, step)
        strategy.synchronize_model()
    except Exception:
        print(f"rank {rank} failed at {time.time():.3f}", flush=True)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    print(f"rank {rank} finished without noticing the stall", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
