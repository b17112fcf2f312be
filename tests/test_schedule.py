"""Learning-rate schedule and the linear scaling rule (pure functions of the global step)."""
import math

import pytest

from toolkit.schedule import lr_at, scaled_lr


def test_linear_scaling_rule():
    assert scaled_lr(0.1, 4, "linear") == pytest.approx(0.4)
    assert scaled_lr(0.1, 4, "none") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="--lr-scaling"):
        scaled_lr(0.1, 4, "sqrt")


def test_warmup_goes_from_one_worker_lr_to_the_scaled_lr_then_cosine_to_zero():
    kw = dict(peak_lr=0.4, total_steps=110, warmup_steps=10, schedule="cosine", start_lr=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(5, **kw) == pytest.approx(0.25)
    assert lr_at(10, **kw) == pytest.approx(0.4)
    assert lr_at(60, **kw) == pytest.approx(0.2)  # half way through the cosine
    assert lr_at(110, **kw) == pytest.approx(0.0, abs=1e-12)
    lrs = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_warmup_starts_at_zero_when_there_is_nothing_to_scale():
    """One rank (or --lr-scaling none): --lr is already the peak, so warm up from 0."""
    kw = dict(peak_lr=0.1, total_steps=100, warmup_steps=10, schedule="cosine", start_lr=0.1)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(0.05)


def test_step_schedule_drops_10x_at_half_and_three_quarters():
    kw = dict(peak_lr=1.0, total_steps=100, schedule="step")
    assert [lr_at(s, **kw) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_cosine_without_warmup_matches_the_formula():
    for step in (0, 17, 50, 99):
        assert lr_at(step, peak_lr=0.2, total_steps=100) == pytest.approx(
            0.1 * (1 + math.cos(math.pi * step / 100)))


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="--schedule"):
        lr_at(0, peak_lr=0.1, total_steps=10, schedule="linear")
