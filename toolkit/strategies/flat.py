"""Contiguous per-dtype buffers mirroring a list of tensors.

One flat tensor per dtype means one allreduce entry per dtype: Horovod then reduces it in
place instead of copying many small tensors into its fusion buffer, and the elementwise
merge runs over one long vector. On the CPU the merge and the snapshot run as single-pass
kernels of the toolkit's extension (torch.ops.dasgd.*); elsewhere as torch ops.
"""
import torch

try:
    from toolkit import _C  # noqa: F401  (registers torch.ops.dasgd)
    # an extension built before these kernels existed has no torch.ops.dasgd
    _HAS_KERNELS = hasattr(torch.ops.dasgd, "merge_")
except ImportError:  # extension not built: the torch-op path below does the same math
    _HAS_KERNELS = False


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
        self._index = {dtype: [] for dtype in sizes}  # source positions per dtype, in order
        for i, t in enumerate(tensors):
            start = offsets[t.dtype]
            self.views.append(self.flats[t.dtype][start:start + t.numel()].view_as(t))
            self._index[t.dtype].append(i)
            offsets[t.dtype] = start + t.numel()

    @property
    def tensors(self):
        """The flat tensors to hand to a collective, in a fixed dtype order."""
        return list(self.flats.values())

    def _groups(self, tensors):
        """(dtype, flat, the tensors of that dtype, their views, single-pass kernel usable)."""
        for dtype, positions in self._index.items():
            group = [tensors[i] for i in positions]
            flat = self.flats[dtype]
            fused = (_HAS_KERNELS and flat.device.type == "cpu"
                     and all(t.is_contiguous() for t in group))
            yield dtype, flat, group, [self.views[i] for i in positions], fused

    def load(self, tensors):
        """Copy `tensors` (same layout) into this buffer."""
        with torch.no_grad():
            for view, t in zip(self.views, tensors):
                view.copy_(t)

    def load_twice(self, tensors, other):
        """Copy `tensors` into this buffer and into `other` (same layout), reading them once."""
        with torch.no_grad():
            for dtype, flat, group, views, fused in self._groups(tensors):
                if fused:
                    torch.ops.dasgd.snapshot_(group, flat, other.flats[dtype])
                    continue
                for view, t in zip(views, group):
                    view.copy_(t)
                other.flats[dtype].copy_(flat)

    def store(self, tensors):
        """Copy this buffer back into `tensors`."""
        with torch.no_grad():
            for view, t in zip(self.views, tensors):
                t.copy_(view)

    def merge_into(self, tensors, snapshot, ranks, relaunch=False):
        """The delay-corrected merge with this buffer holding the SUM over `ranks` ranks of
        the snapshots: tensors += (self - ranks * snapshot) / ranks  (= avg - s). With
        `relaunch`, this buffer and `snapshot` then hold the merged tensors, ready to be sent
        as the next round (saves re-reading the model for the next snapshot)."""
        with torch.no_grad():
            for dtype, flat, group, views, fused in self._groups(tensors):
                snap = snapshot.flats[dtype]
                if fused:
                    torch.ops.dasgd.merge_(group, flat, snap, int(ranks), bool(relaunch))
                    continue
                flat.sub_(snap, alpha=ranks)
                torch._foreach_add_(group, views, alpha=1.0 / ranks)
                if relaunch:
                    for view, t in zip(views, group):
                        view.copy_(t)
                    snap.copy_(flat)
