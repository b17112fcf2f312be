"""Checks a step benchmark makes on its own results before it prints a number.

A measurement that contradicts what can physically happen is a broken measurement, not a
result: no strategy can step faster than `none` (which communicates nothing) beyond the
noise, the hidden fraction (sync − dasgd) / (sync − none) cannot exceed 1 where sync's
communication is measurable at all, and a run that
started while other work loaded the machine beyond its cores measured that work too.
Each check names what it saw; the benchmark stops with exit 3 (BENCH_INSANE) instead of
writing the numbers.
"""
import math

from experiments.studies.verdicts import interval

BENCH_INSANE = 3


class BenchmarkInsane(RuntimeError):
    """The results fail a sanity check; the message is one line naming the check."""


# A strategy that truly steps as fast as `none` (local between averages) must not trip the
# check by chance: at 95 % it would, for one of five strategies, in about one run in ten.
CONFIDENCE = 0.999


def ratio_interval(numerator, denominator, confidence=CONFIDENCE):
    """Per-round ratios (rounds ran back to back, so load changes between rounds cancel):
    their geometric mean and t-interval, from the log ratios."""
    logs = [math.log(a / b) for a, b in zip(numerator, denominator)]
    ci = interval(logs, confidence)
    # With few rounds the t quantile is huge (636 at 99.9 % and 2 rounds): exp overflows.
    back = (lambda v: None if v is None else math.exp(min(v, 700.0)))  # noqa: E731
    return {"ratio": back(ci["mean"]), "lo": back(ci["lo"]), "hi": back(ci["hi"]),
            "rounds": ci["n"]}


def problems(round_step_s, hidden_fraction=None, load_start=None, cores=None):
    """Every failed check, one line each ([] when the results are sane).

    round_step_s: {strategy: [per-round step seconds]} with a `none` entry;
    load_start: the 1-minute load average before the benchmark started its processes."""
    found = []
    base = round_step_s.get("none")
    for name, times in sorted(round_step_s.items()):
        if name == "none" or base is None:
            continue
        if not all(math.isfinite(t) and t > 0 for t in times):
            found.append(f"{name}: step times not finite and positive: {times}")
            continue
        ci = ratio_interval(times, base)
        if ci["hi"] is not None and ci["hi"] < 1:
            found.append(f"{name} steps faster than `none` beyond the noise: {name}/none "
                         f"{ci['ratio']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}] over "
                         f"{ci['rounds']} rounds")
    # The hidden fraction means something only when sync's communication is measurable
    # (sync/none above 1 beyond the noise); then it cannot exceed 1.
    exposed = ratio_interval(round_step_s["sync"], base) \
        if base is not None and "sync" in round_step_s else None
    if hidden_fraction is not None and hidden_fraction > 1 and exposed is not None and \
            exposed["lo"] is not None and exposed["lo"] > 1:
        found.append(f"hidden fraction {hidden_fraction:.2f} > 1 while sync/none is "
                     f"{exposed['ratio']:.3f} [{exposed['lo']:.3f}, {exposed['hi']:.3f}]: "
                     f"dasgd cannot hide more than all of the communication")
    if load_start is not None and cores is not None and load_start > cores:
        found.append(f"the machine was loaded by other work before the run (load "
                     f"{load_start:.1f} on {cores} cores): wait for a quiet machine")
    return found


def check(round_step_s, hidden_fraction=None, load_start=None, cores=None):
    """Raises BenchmarkInsane with the first problem (and how many more there are)."""
    found = problems(round_step_s, hidden_fraction, load_start, cores)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise BenchmarkInsane(f"benchmark results fail a sanity check: {found[0]}{more}")
