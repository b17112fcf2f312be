"""Learning-rate schedules indexed by the global step (identical on every rank)."""
import math


def scaled_lr(base_lr, world_size, rule):
    """The linear scaling rule: lr grows with the number of workers (Goyal et al.)."""
    if rule == "linear":
        return base_lr * world_size
    if rule == "none":
        return base_lr
    raise ValueError(f"--lr-scaling must be linear or none, got {rule!r}")


def lr_at(step, *, peak_lr, total_steps, warmup_steps=0, schedule="cosine", start_lr=None):
    """Linear warm-up from start_lr to peak_lr, then cosine to 0 or steps of 10x at 50%/75%.

    The warm-up starts at start_lr (one worker's lr, Goyal et al.) when that is below the
    peak, else at 0: with one rank or without scaling a requested warm-up still happens."""
    if warmup_steps and step < warmup_steps:
        start = 0.0 if start_lr is None or start_lr >= peak_lr else start_lr
        return start + (peak_lr - start) * step / warmup_steps
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return 0.5 * peak_lr * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        progress = step / max(total_steps, 1)
        return peak_lr * (0.1 ** ((progress >= 0.5) + (progress >= 0.75)))
    raise ValueError(f"--schedule must be cosine or step, got {schedule!r}")
