"""A job that stalls on purpose at step 3.

skip: rank 1 submits a different collective: it jumps to synchronize_model() (a blocking
      average under another name) while rank 0 keeps training, so with dasgd rank 0's merge
      at step 4 waits for the average it launched at step 3. Neither collective can
      complete: both ranks must fail with an error naming the step.
die:  rank 1 exits abruptly (exit code 3) without a word to Horovod.
Usage: dasgd_stall.py skip|die dasgd|sync
"""
import os
import sys

import torch

from dasgd_common import init_horovod, tiny_model, train_step
from toolkit.strategies import make_strategy


def main(mode, name):
    hvd = init_horovod()
    model = tiny_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    strategy = make_strategy(name, model, opt)
    for step in range(1, 9):
        if hvd.rank() == 1 and step == 3:
            if mode == "die":
                os._exit(3)
            strategy.synchronize_model()
        train_step(model, strategy, hvd.rank(), step)
    strategy.synchronize_model()
    print(f"rank {hvd.rank()} finished without noticing the stall", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
