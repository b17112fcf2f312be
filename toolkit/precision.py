"""Mixed precision: autocast for the forward pass and the loss, and the dynamic loss scale
that fp16 gradients need.

Weights, optimizer state and everything the strategies average stay fp32: autocast only
changes the dtype of the operations' results. The invariance layer computes its
statistics in fp32 whatever its input dtype.

The loss scale is applied by the optimizer (toolkit.optim) right before its update, that
is after a strategy has averaged the gradients: the strategies call optimizer.step()
themselves, so torch's GradScaler, which wants to be the caller, does not fit. Same rules
as GradScaler: start at 2^16, halve and skip the update on inf/NaN gradients, double after
2,000 finite steps in a row.
"""
import contextlib
import math

import torch

AMP_MODES = ("off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(mode, device):
    """ValueError (one line) when `mode` is unknown or cannot run on `device`."""
    if mode not in AMP_MODES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--amp bf16: the GPU {torch.cuda.get_device_name(device)} has no "
                         f"bfloat16 support; use --amp fp16")


def autocast(mode, device):
    """The context for the forward pass and the loss (a no-op for `off`)."""
    if mode == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[mode])


class LossScale:
    """Dynamic loss scaling for fp16: multiply the loss by `scale` before backward, divide
    the gradients by it before the update, skip updates whose gradients overflowed."""

    def __init__(self, initial=2.0 ** 16, growth_interval=2000, factor=2.0):
        self.scale = float(initial)
        self.growth_interval, self.factor = int(growth_interval), float(factor)
        self.good_steps = 0
        self.skipped = 0

    def scale_loss(self, loss):
        return loss * self.scale

    def unscale(self, grads):
        """Divide `grads` by the scale in place; True when all of them are finite."""
        if not grads:
            return True
        torch._foreach_mul_(grads, 1.0 / self.scale)
        norms = torch._foreach_norm(grads)
        return math.isfinite(torch.stack(norms).sum().item())

    def update(self, finite):
        """After an update attempt: back off on overflow, grow after a run of good steps."""
        if not finite:
            self.scale /= self.factor
            self.good_steps = 0
            self.skipped += 1
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.factor
            self.good_steps = 0

    def state_dict(self):
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state):
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped = int(state.get("skipped", 0))
