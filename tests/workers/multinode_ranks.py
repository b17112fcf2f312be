"""Every rank reports where it runs and how Horovod numbered it; rank 0 prints one line
`ranks: {json}` with all ranks' reports and the result of a sum over all ranks."""
import json
import socket

import horovod.torch as hvd
import torch

hvd.init()
me = {"rank": hvd.rank(), "size": hvd.size(), "local_rank": hvd.local_rank(),
      "local_size": hvd.local_size(), "cross_rank": hvd.cross_rank(),
      "cross_size": hvd.cross_size(), "host": socket.gethostname()}
everyone = hvd.allgather_object(me)
# Large enough to be split into pieces by any allreduce algorithm.
total = hvd.allreduce(torch.full((300_000,), float(hvd.rank() + 1)), op=hvd.Sum)
if hvd.rank() == 0:
    print("ranks: " + json.dumps({"ranks": everyone, "sum_min": float(total.min()),
                                  "sum_max": float(total.max())}), flush=True)
