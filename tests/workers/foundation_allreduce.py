"""Every rank contributes rank+1; the sum and the average must come back exact."""
import sys

import horovod.torch as hvd
import torch

from toolkit import job

ctx = job.init()
n = ctx.size
total = hvd.allreduce(torch.full((4,), float(ctx.rank + 1)), op=hvd.Sum, name="check.sum")
mean = hvd.allreduce(torch.full((4,), float(ctx.rank + 1)), op=hvd.Average, name="check.avg")
expect = n * (n + 1) / 2
if not (torch.all(total == expect) and torch.allclose(mean, torch.tensor(expect / n))):
    print(f"rank {ctx.rank}: allreduce gave {total.tolist()} / {mean.tolist()}, "
          f"expected {expect} / {expect / n}", flush=True)
    sys.exit(1)
print(f"rank {ctx.rank}/{n} launcher={ctx.launcher} allreduce ok sum={expect:g}", flush=True)
