"""Ratios of step times measured in the same rounds, with a 95 % interval.

The contenders of a step benchmark take turns within each round, so a ratio of two of them
is taken per round (turns that ran back to back share the machine's load) and summarised by
the median of the per-round ratios. Its interval is a percentile bootstrap of that median:
the rounds are resampled with replacement (RESAMPLES times, a fixed seed, so the same
measurement always gives the same interval) and the 2.5th and 97.5th percentiles of the
resampled medians are the bounds. It assumes nothing about the ratios' distribution; with
few rounds it is coarse (with 8 rounds its bounds are among the per-round values), never
narrower than the data allow.
"""
import random
import statistics

CONFIDENCE = 0.95
RESAMPLES = 10000
SEED = 20231


def per_round_ratios(numerator, denominator):
    """[a / b] of the rounds both hold, in round order."""
    return [a / b for a, b in zip(numerator, denominator)]


def _percentile(sorted_values, q):
    """Linear interpolation between order statistics, q in [0, 1]."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def median_interval(values, confidence=CONFIDENCE, resamples=RESAMPLES, seed=SEED):
    """{median, lo, hi, rounds}: the median of `values` and its percentile-bootstrap
    interval (lo and hi None with fewer than 2 values)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to summarise")
    out = {"median": statistics.median(values), "lo": None, "hi": None, "rounds": len(values)}
    if len(values) < 2:
        return out
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values)))
                     for _ in range(resamples))
    tail = (1 - confidence) / 2
    out["lo"], out["hi"] = _percentile(medians, tail), _percentile(medians, 1 - tail)
    return out


def ratio_interval(numerator, denominator, **kwargs):
    """The median of the per-round ratios numerator/denominator and its 95 % interval."""
    return median_interval(per_round_ratios(numerator, denominator), **kwargs)


def fastest_other(round_step_s, of, among):
    """Per round, the fastest step of the contenders `among` other than `of`: what `of` is
    held against ("no slower than any peer")."""
    others = [round_step_s[n] for n in among if n != of and n in round_step_s]
    return [min(values) for values in zip(*others)]
