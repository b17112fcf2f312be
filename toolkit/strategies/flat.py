"""Contiguous per-dtype buffers mirroring a list of tensors.

One flat tensor per dtype means one allreduce entry per dtype: Horovod then reduces it in
place instead of copying many small tensors into its fusion buffer, and the elementwise
merge runs over one long vector.
"""
import torch


class FlatBuffer:
    """Flat storage with one view per source tensor (same shapes, same order)."""

    def __init__(self, tensors):
        tensors = list(tensors)
        sizes, devices = {}, {}
        for t in tensors:
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
            if devices.setdefault(t.dtype, t.device) != t.device:
                raise ValueError(f"FlatBuffer: {t.dtype} tensors on {devices[t.dtype]} and "
                                 f"{t.device}; a model must live on one device")
        # on the model's device: GPU models average GPU buffers (NCCL with a GPU Horovod)
        self.flats = {dtype: torch.zeros(n, dtype=dtype, device=devices[dtype])
                      for dtype, n in sizes.items()}
        offsets = dict.fromkeys(sizes, 0)
        self.views = []
        for t in tensors:
            start = offsets[t.dtype]
            self.views.append(self.flats[t.dtype][start:start + t.numel()].view_as(t))
            offsets[t.dtype] = start + t.numel()

    @property
    def tensors(self):
        """The flat tensors to hand to a collective, in a fixed dtype order."""
        return list(self.flats.values())

    def load(self, tensors):
        """Copy `tensors` (same layout) into this buffer."""
        with torch.no_grad():
            for view, t in zip(self.views, tensors):
                view.copy_(t)

    def store(self, tensors):
        """Copy this buffer back into `tensors`."""
        with torch.no_grad():
            for view, t in zip(self.views, tensors):
                t.copy_(view)

    def subtract(self, other, alpha=1):
        """self -= alpha * other, flat by flat (other must have the same layout)."""
        for dtype, flat in self.flats.items():
            flat.sub_(other.flats[dtype], alpha=alpha)

    def add_into(self, tensors, alpha=1):
        """tensors += alpha * this buffer."""
        with torch.no_grad():
            if tensors:
                torch._foreach_add_(list(tensors), self.views, alpha=alpha)
