"""Rank worker: rank 1 never submits a blocking collective that rank 0 waits on (the
stop vote or an evaluation sum, named by argv[1]). Rank 0 must get the deadline's error
(it prints the message and how long it waited); rank 1 leaves after rank 0's deadline."""
import os
import sys
import time

import horovod.torch as hvd
import torch

from toolkit import job
from toolkit.preemption import StopVote
from toolkit.strategies import CommunicationError

which = sys.argv[1]
hvd.init()
hvd.allreduce(torch.zeros(1), name="warm")  # both ranks are up and connected
if hvd.rank() == 1:
    time.sleep(float(os.environ["TOOLKIT_COMM_TIMEOUT_S"]) + 8)
    os._exit(0)  # without Horovod's shutdown, which would wait for rank 0's collective
start = time.monotonic()
try:
    if which == "vote":
        vote = StopVote()
        vote.decide(False, step=7)
        vote.drain()
    else:
        job.allreduce_sum(torch.ones(3, dtype=torch.float64), name="eval.totals")
    print("no error", flush=True)
except CommunicationError as exc:
    print(f"{exc} | after {time.monotonic() - start:.1f} s", flush=True)
os._exit(0)
