"""The claims study's statistics on hand-made numbers: the t quantile, the paired
t-interval and the verdicts of superiority and equivalence claims."""
import math

import pytest

from experiments.studies import verdicts as v


@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.7062047362), (0.975, 2, 4.3026527297), (0.975, 4, 2.7764451052),
    (0.975, 10, 2.2281388520), (0.975, 30, 2.0422724563), (0.975, 60, 2.0002978220),
    (0.95, 3, 2.3533634348), (0.995, 5, 4.0321429836), (0.025, 5, -2.5705818366)])
def test_t_quantile_matches_tables(p, df, expected):
    assert v.t_quantile(p, df) == pytest.approx(expected, abs=1e-8)


def test_t_quantile_tends_to_the_normal_one():
    assert v.t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_paired_interval_is_the_textbook_one():
    a = {0: 90.1, 1: 91.0, 2: 89.5, 3: 90.7, 4: 90.2, 9: 50.0}
    b = {0: 89.0, 1: 89.9, 2: 89.0, 3: 89.4, 4: 89.9, 7: 10.0}
    seeds, diffs = v.paired(a, b)
    assert seeds == [0, 1, 2, 3, 4]  # only seeds both sides ran
    assert diffs == pytest.approx([1.1, 1.1, 0.5, 1.3, 0.3])
    ci = v.interval(diffs)
    sd = math.sqrt(sum((d - 0.86) ** 2 for d in diffs) / 4)
    assert ci["mean"] == pytest.approx(0.86)
    assert ci["sd"] == pytest.approx(sd)
    # sd = sqrt(0.752 / 4) = 0.43359; half-width t(0.975, 4) 2.7764451052 * sd / sqrt(5) = 0.53837
    assert ci["lo"] == pytest.approx(0.86 - 2.7764451052 * sd / math.sqrt(5), abs=1e-9)
    assert (ci["lo"], ci["hi"]) == pytest.approx((0.32163, 1.39837), abs=1e-5)


def ci(lo, hi):
    return {"n": 5, "mean": (lo + hi) / 2, "sd": 1.0, "lo": lo, "hi": hi}


@pytest.mark.parametrize("lo, hi, side, verdict", [
    (0.2, 1.5, +1, "supported"), (-1.5, -0.2, +1, "contradicted"), (-0.2, 1.5, +1, "inconclusive"),
    (-1.5, -0.2, -1, "supported"), (0.2, 1.5, -1, "contradicted"), (-1.5, 0.1, -1, "inconclusive")])
def test_superiority(lo, hi, side, verdict):
    assert v.superiority(ci(lo, hi), side) == verdict


@pytest.mark.parametrize("lo, hi, verdict", [
    (-0.4, 0.3, "supported"), (-0.5, 0.5, "supported"), (0.6, 1.2, "contradicted"),
    (-2.0, -0.7, "contradicted"), (-0.7, 0.2, "inconclusive"), (0.3, 0.8, "inconclusive"),
    (-0.8, 0.8, "inconclusive")])
def test_equivalence_with_half_a_point(lo, hi, verdict):
    assert v.equivalence(ci(lo, hi), 0.5) == verdict


def test_fewer_than_two_pairs_are_inconclusive():
    one = v.interval([3.0])
    assert one["lo"] is None and one["mean"] == 3.0
    assert v.superiority(one) == v.equivalence(one) == "inconclusive"
    assert v.interval([])["n"] == 0


def test_a_diverged_run_counts_as_chance_and_never_reaches_a_target():
    assert v.final_accuracy({"diverged": True, "test_acc": 0.8}) == pytest.approx(10.0)
    assert v.final_accuracy({"diverged": False, "test_acc": 0.8}) == pytest.approx(80.0)
    curve = [{"step": 10, "val_acc": 0.5}, {"step": 20, "val_acc": 0.82},
             {"step": 30, "val_acc": None}]
    assert v.steps_to(curve, 0.8, "val_acc") == 20
    assert v.steps_to(curve, 0.9, "val_acc") is None


def test_a_run_that_never_reached_the_target_is_censored_and_cannot_support():
    assert v.log_ratio(50, 100, 100) == (pytest.approx(math.log(0.5)), False)
    assert v.log_ratio(None, 100, 100) == (0.0, True)
    below = ci(-0.9, -0.1)
    assert v.ratio_verdict(below, censored=False) == "supported"
    assert v.ratio_verdict(below, censored=True) == "inconclusive"
    assert v.ratio_verdict(ci(0.1, 0.5), censored=True) == "contradicted"
