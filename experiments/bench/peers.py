"""PyTorch's own data parallelism as contenders of the communication benchmark.

  ddp        DistributedDataParallel over gloo: gradients allreduced in buckets during
             backward (what a PyTorch user runs instead of Horovod's `sync`)
  postlocal  DDP + PostLocalSGD (torch.distributed.algorithms): after one synchronous
             step every rank steps alone (the comm hook sends no gradients) and
             PeriodicModelAverager averages the parameters every H steps, blocking: the
             PyTorch counterpart of `local`

Both run in the same job as the Horovod strategies, on the same ranks, over the same
(emulated) links: on one host torch.distributed's gloo process group connects over
127.0.0.1 (the rate-limited loopback of bench_comm's namespace); across hosts (emulated
nodes) over the address rank 0's host name resolves to, i.e. the nodes' own links.
"""
import os
import socket

PEER_NAMES = ("ddp", "postlocal")
PORT_ENV = "TOOLKIT_BENCH_DDP_PORT"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _thread_ids():
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _rendezvous_address(hvd):
    """Where rank 0 listens: loopback when every rank is on its host; otherwise the address
    its host name resolves to (on emulated nodes, its own node's link), so that the peers'
    traffic crosses the same per-node links as Horovod's."""
    if hvd.local_size() == hvd.size():
        return "127.0.0.1", _free_port()
    name = socket.gethostname()
    address = socket.gethostbyname(name)
    with socket.socket() as s:
        s.bind((address, 0))
        return address, s.getsockname()[1]


def init_torch_distributed(hvd):
    """A gloo process group over the Horovod job's ranks; returns the ids of the threads it
    started (its communication threads, for the benchmark's CPU split)."""
    import torch.distributed as dist
    before = _thread_ids()
    address, port = hvd.broadcast_object(_rendezvous_address(hvd) if hvd.rank() == 0 else None,
                                         root_rank=0, name="bench.ddp_port")
    if address == "127.0.0.1":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # Across hosts gloo takes the address the host name resolves to, like the rendezvous.
    dist.init_process_group("gloo", init_method=f"tcp://{address}:{port}",
                            rank=hvd.rank(), world_size=hvd.size())
    return _thread_ids() - before


class TorchPeer:
    """DDP or DDP + PostLocalSGD behind the interface the benchmark drives a strategy by:
    `.module` to call, `.optimizer` to zero, `step()`, `flush()`, `comm_wait_s`."""

    def __init__(self, name, model, optimizer, period):
        from torch.nn.parallel import DistributedDataParallel
        if name not in PEER_NAMES:
            raise ValueError(f"unknown peer {name!r}; choose one of {', '.join(PEER_NAMES)}")
        self.name = name
        self.module = DistributedDataParallel(model)  # broadcasts rank 0's parameters
        if name == "postlocal":
            from torch.distributed.algorithms.ddp_comm_hooks.post_localSGD_hook import (
                PostLocalSGDState, post_localSGD_hook)
            from torch.distributed.algorithms.model_averaging.averagers import (
                PeriodicModelAverager)
            from torch.distributed.optim import PostLocalSGDOptimizer
            # One synchronous step, then local steps without any gradient communication.
            state = PostLocalSGDState(process_group=None, subgroup=None, start_localSGD_iter=1,
                                      post_local_gradient_allreduce=False)
            self.module.register_comm_hook(state, post_localSGD_hook)
            optimizer = PostLocalSGDOptimizer(
                optim=optimizer, averager=PeriodicModelAverager(period=period, warmup_steps=1))
        self.optimizer = optimizer
        # Its waits happen inside torch (backward, the averager): not separable from here.
        self.comm_wait_s = 0.0

    def step(self):
        self.optimizer.step()

    def flush(self):
        """Nothing in flight between steps: DDP and the averager block."""

