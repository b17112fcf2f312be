"""Optimizer construction: SGD with momentum or AdamW, with gradient clipping and the fp16
loss scale applied inside the optimizer's step.

Why inside the step: every strategy calls optimizer.step() itself, after it has averaged
the gradients (sync, DaSGD's warm-up) or on purely local gradients (none, local, dasgd).
Clipping and unscaling at that point see exactly the gradients the update will use, on
every strategy, without the strategies knowing about them. Horovod's DistributedOptimizer
subclasses the optimizer's class, so the settings are class attributes of a class made per
optimizer: they survive that re-wrapping.
"""
import torch

from toolkit.precision import LossScale

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_BETAS = (0.9, 0.999)


def parse_betas(text):
    """'0.9,0.999' -> (0.9, 0.999); ValueError (one line) unless two numbers in [0, 1)."""
    parts = str(text).replace(" ", "").split(",")
    try:
        betas = tuple(float(p) for p in parts)
    except ValueError:
        betas = ()
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"--betas must be two numbers in [0, 1) separated by a comma "
                         f"(e.g. 0.9,0.999), got {text!r}")
    return betas


def check_optimizer(kind, *, grad_clip=0.0, label_smoothing=0.0):
    """ValueError (one line) for an unknown optimizer or out-of-range clip / smoothing."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
    if not grad_clip >= 0:
        raise ValueError(f"--grad-clip must be >= 0 (0: no clipping), got {grad_clip}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")


class _PreparedUpdate:
    """Mixin in front of a torch optimizer: unscale (fp16), skip on overflow, clip, update."""

    grad_clip = 0.0
    loss_scale = None

    def step(self, closure=None):
        if not self.prepare_gradients():
            return None
        return super().step(closure)

    def prepare_gradients(self):
        """True when the update should happen (always, unless fp16 gradients overflowed)."""
        params = [p for group in self.param_groups for p in group["params"]
                  if p.grad is not None]
        if self.loss_scale is not None:
            finite = self.loss_scale.unscale([p.grad for p in params])
            self.loss_scale.update(finite)
            if not finite:
                return False
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        return True


def _decay_groups(model, weight_decay):
    """AdamW: biases and per-channel scales (tensors of one dimension) are not decayed, the
    usual practice for transformers; weight matrices and kernels are."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    keep = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return groups


def build_optimizer(model, kind, *, lr, momentum=0.9, weight_decay=0.0, betas=DEFAULT_BETAS,
                    grad_clip=0.0, loss_scale=None):
    """The optimizer for `model`. sgd: momentum and L2 weight decay added to the gradient
    (torch's SGD); adamw: Adam with weight decay decoupled from the gradient (Loshchilov &
    Hutter). grad_clip > 0 clips the global gradient norm; loss_scale (a LossScale) for fp16."""
    check_optimizer(kind, grad_clip=grad_clip)
    if loss_scale is not None and not isinstance(loss_scale, LossScale):
        raise ValueError(f"loss_scale must be a LossScale, got {type(loss_scale).__name__}")
    base = torch.optim.SGD if kind == "sgd" else torch.optim.AdamW
    cls = type(base.__name__, (_PreparedUpdate, base),
               {"grad_clip": float(grad_clip), "loss_scale": loss_scale})
    if kind == "sgd":
        return cls(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return cls(_decay_groups(model, weight_decay), lr=lr, betas=tuple(betas),
               weight_decay=weight_decay)


def optimizer_kind(optimizer):
    """'sgd' or 'adamw' for an optimizer from build_optimizer (Horovod-wrapped or not)."""
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    raise ValueError(f"not an optimizer from build_optimizer: {type(optimizer).__name__}")
