"""Averages that travel in bf16 or fp16 while the weights stay in fp32.

Rounding the weights themselves to 8 (bf16) or 11 (fp16) significant bits would move every
weight by up to 2^-8 of its magnitude at every merge. Instead each rank sends the difference
between its snapshot and a reference r that every rank holds identically (the last merged
average of this buffer, or the common model the run started from):

    launch:  q_i = round(s_i - r)              sent in the low-precision dtype; kept as well
    merge:   m = (sum_j q_j) / n               (the allreduce's sum, computed in fp32)
             w_i <- w_i + (m - q_i)            the delayed merge rule with a = r + m, s = r + q_i
             r   <- r + m                      identical on every rank

Horovod 0.28's PyTorch frontend has no bfloat16 allreduce (fp16 it has): bf16 payloads
travel as an allgather of their bits (int16) and every rank adds the n parts in fp32, in
rank order, so the sum is identical everywhere. An allgather brings (n-1) payloads to each
rank, a ring allreduce about two: bf16 moves fewer bytes than an fp32 allreduce up to 4
ranks and more beyond; fp16 is a true allreduce at half the bytes at any scale.

The differences are the distance the ranks moved since the last average, far smaller than
the weights, so the rounding error is relative to that distance. Subtracting the rounded
q_i that was actually sent (not the exact difference) keeps the mean over ranks of the
weights unchanged by the merge, and the part of s_i - r that the rounding dropped stays in
rank i's weights, so it travels with the next round's difference instead of being lost:
the error does not accumulate. docs/dasgd.md states the bound the tests check.
"""
import torch

from .flat import FlatBuffer

WIRE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Unit roundoff of round-to-nearest: half the spacing of numbers near 1.
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "bf16": 2.0 ** -8, "fp16": 2.0 ** -11}


def start_sum(hvd, flat, name):
    """Start summing `flat` (fp32, fp16 or bf16) over the ranks; the handle's output is
    what finish_sum() needs."""
    if flat.dtype == torch.bfloat16:
        return hvd.allgather_async(flat.view(torch.int16), name=name)
    return hvd.allreduce_async_(flat, name=name, op=hvd.Sum)


def finish_sum(flat, received, ranks):
    """The sum over ranks in fp32, from start_sum()'s output (bf16: the gathered parts
    added in rank order; otherwise the allreduced buffer itself)."""
    if flat.dtype != torch.bfloat16:
        return flat.float()
    parts = received.view(torch.bfloat16).view(ranks, -1)
    total = parts[0].float()
    for part in parts[1:]:
        total += part.float()
    return total


def check_avg_dtype(value):
    if value not in WIRE_DTYPES:
        raise ValueError(f"avg_dtype must be one of {', '.join(WIRE_DTYPES)}, got {value!r}")
    return value


class _WireBuffer:
    """One flat low-precision tensor with a view per source tensor (same shapes)."""

    def __init__(self, tensors, dtype):
        device = tensors[0].device if tensors else "cpu"
        self.flat = torch.zeros(sum(t.numel() for t in tensors), dtype=dtype, device=device)
        self.views, start = [], 0
        for t in tensors:
            self.views.append(self.flat[start:start + t.numel()].view(t.shape))
            start += t.numel()


class LowPrecisionSlot:
    """Send buffer, kept copy of what was sent, and the reference, for one round in flight.

    `reference` holds the values (identical on every rank) the first difference is taken
    from; later rounds of this slot take it from the average they merged."""

    def __init__(self, tensors, name, dtype, reference):
        self.name = name
        self.dtype = dtype
        self.send = _WireBuffer(tensors, dtype)
        self.sent = _WireBuffer(tensors, dtype)
        self.reference = FlatBuffer(tensors)
        self.reference.load(reference)

    def start(self, hvd):
        return start_sum(hvd, self.send.flat, self.name)

    def prepare(self, tensors):
        with torch.no_grad():
            diffs = torch._foreach_sub(list(tensors), self.reference.views)
            for view, diff in zip(self.send.views, diffs):
                view.copy_(diff)
            self.sent.flat.copy_(self.send.flat)

    def merge(self, tensors, ranks, received, relaunch=False):
        tensors = list(tensors)
        with torch.no_grad():
            total = finish_sum(self.send.flat, received, ranks)
            mean, start = [], 0
            for t in tensors:
                mean.append(total[start:start + t.numel()].view(t.shape).to(t.dtype))
                start += t.numel()
            torch._foreach_div_(mean, float(ranks))
            correction = torch._foreach_sub(mean, [v.to(t.dtype) for v, t in
                                                   zip(self.sent.views, tensors)])
            torch._foreach_add_(tensors, correction)
            torch._foreach_add_(self.reference.views, mean)
        if relaunch:
            self.prepare(tensors)

    def reset_reference(self, tensors):
        """The ranks hold one identical model again (after a blocking average)."""
        self.reference.load(tensors)
