"""Differentiable, blocking average of the batch moments over all ranks (sync=True).

Uses torch.distributed when it is initialised, else Horovod when it is initialised; with a
single process the moments are returned unchanged.  Off by default and off under DaSGD,
whose point is that no rank ever waits inside forward.
"""
import itertools

import torch

_names = itertools.count()


def new_name():
    """A collective name per layer, identical on every rank (layers are built in order)."""
    return f"invariance.moments.{next(_names)}"


def average_moments(mean, second, name):
    flat = torch.cat([mean.reshape(-1), second.reshape(-1)])
    flat = _average(flat, name)
    return flat[: mean.numel()].view_as(mean), flat[mean.numel():].view_as(second)


def average_mean(mean, name):
    """The mean alone (refresh="center"'s stale steps), averaged like average_moments."""
    return _average(mean.reshape(-1), name).view_as(mean)


def _average(flat, name):
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce
        return all_reduce(flat) / dist.get_world_size()
    try:
        import horovod.torch as hvd
    except ImportError:
        return flat
    if hvd.is_initialized() and hvd.size() > 1:
        return hvd.allreduce(flat, op=hvd.Average, name=name)
    return flat
