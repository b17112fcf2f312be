"""Verdicts of claims from runs paired by seed: a 95 % t-interval of the paired differences.

A comparison pairs, seed by seed, a run of the configuration under test with a run of its
reference (same seed: same initial weights, data order and validation split) and takes the
interval of the mean difference, mean ± t(0.975, n−1) · sd / √n.

- superiority ("A is better than B"): supported when the whole interval is on the claimed
  side of zero, contradicted when it is wholly on the other side, inconclusive otherwise;
- equivalence ("A is as good as B"): supported when the interval lies within ±margin,
  contradicted when it lies wholly outside (entirely above +margin or below −margin),
  inconclusive otherwise (it straddles a margin).

Fewer than two pairs give no interval: inconclusive.

Diverged runs (launch.train exit 3) never reach a target, and their final accuracy counts
as chance (1 / classes): the run produced no usable model, whatever it reached before its
loss became NaN (counting its last evaluation instead would reward a run for diverging late).
Every comparison reports how many of its runs diverged.

The t quantile is computed here (no scipy): Student's t distribution function through the
regularized incomplete beta function (continued fraction), inverted by bisection.
"""
import math

CONFIDENCE = 0.95
MARGIN_POINTS = 0.5  # equivalence margin, accuracy points

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


def _betacf(a, b, x):
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a, b, x):
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t, df):
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p, df):
    """The p-quantile of Student's t with df degrees of freedom (0 < p < 1)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def interval(values, confidence=CONFIDENCE):
    """Mean and t-interval of `values`: {n, mean, sd, lo, hi} (lo, hi None below 2 values)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "lo": None, "hi": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "lo": None, "hi": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}


def paired(a, b):
    """Per-seed differences a − b over the seeds both dicts (seed -> value) hold."""
    seeds = sorted(set(a) & set(b))
    return seeds, [a[s] - b[s] for s in seeds]


def superiority(ci, side=+1):
    """side +1: the claim is difference > 0; side −1: difference < 0."""
    if ci["lo"] is None:
        return INCONCLUSIVE
    lo, hi = (ci["lo"], ci["hi"]) if side > 0 else (-ci["hi"], -ci["lo"])
    if lo > 0:
        return SUPPORTED
    if hi < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def equivalence(ci, margin=MARGIN_POINTS):
    if ci["lo"] is None:
        return INCONCLUSIVE
    if -margin <= ci["lo"] and ci["hi"] <= margin:
        return SUPPORTED
    if ci["hi"] < -margin or ci["lo"] > margin:
        return CONTRADICTED
    return INCONCLUSIVE


def noninferiority(ci, margin=MARGIN_POINTS):
    """The difference (new - reference) is not below -margin: its interval's lower bound
    is above it; contradicted when the whole interval is below it."""
    if ci["lo"] is None:
        return INCONCLUSIVE
    if ci["lo"] > -margin:
        return SUPPORTED
    if ci["hi"] < -margin:
        return CONTRADICTED
    return INCONCLUSIVE


def final_accuracy(run, num_classes=10):
    """A run's final accuracy in points: chance when it diverged (see the module text)."""
    return 100.0 / num_classes if run["diverged"] else 100.0 * run["test_acc"]


def steps_to(curve, target, key):
    """First evaluation step whose `key` accuracy reaches `target`; None if none does."""
    return next((p["step"] for p in curve if p.get(key) is not None and p[key] >= target),
                None)


def log_ratio(steps, reference_steps, total_steps):
    """ln(steps / reference_steps) for one pair, and whether it is censored: a run that
    never reached the target counts with its total steps, a lower bound of what it needed."""
    censored = steps is None
    return math.log((total_steps if censored else steps) / reference_steps), censored


def ratio_verdict(ci, censored, side=-1):
    """Superiority on log ratios. Censored pairs enter at their lower bound, which biases
    the interval towards fewer steps: with any of them, `supported` becomes inconclusive."""
    verdict = superiority(ci, side)
    return INCONCLUSIVE if verdict == SUPPORTED and censored and side < 0 else verdict
