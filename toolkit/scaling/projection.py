"""Project throughput and efficiency of `sync` and `dasgd` to many workers.

Step-time model, per worker, with c = measured compute time of one step (strategy none)
and t(p) = ring allreduce time of the model on p workers (alpha-beta, calibrated):
  sync:  c + max(0, t(p) - o·c)          gradients are reduced during backward; o = share
                                         of the step that overlaps communication
                                         (calibrated from the measured sync step)
  dasgd: c + max(0, t(p) - d·c) / H      the average of period H travels for d steps of
                                         compute before it is needed; with d = "auto"
                                         d(p) is what `--delay auto` picks: the smallest
                                         integer with t(p) <= d·step, at most 8
Throughput = p · batch / step; efficiency = c / step (1 = no communication cost).
"""
import math
from dataclasses import dataclass

from toolkit.scaling.calibration import fit_alpha_beta, ring_allreduce_s
from toolkit.strategies.auto_delay import DEFAULT_BOUNDS, check_delay, choose_delay

DEFAULT_WORKERS = tuple(2 ** k for k in range(3, 13))  # 8 ... 4096


@dataclass
class Model:
    compute_s: float
    bytes: float
    alpha: float
    beta: float
    overlap: float        # o, fraction of c
    period: int = 1       # H
    delay: object = 1     # d, or "auto"
    dasgd_overhead_s: float = 0.0  # per-step cost of dasgd beyond the model (measured)

    def allreduce_s(self, p):
        return float(ring_allreduce_s(p, self.bytes, self.alpha, self.beta))

    def delay_at(self, p):
        """d on p workers: fixed, or as `--delay auto` would choose it (the step it measures
        is dasgd's own, compute plus overhead)."""
        if self.delay != "auto":
            return self.delay
        return choose_delay(self.allreduce_s(p), self.compute_s + self.dasgd_overhead_s,
                            DEFAULT_BOUNDS)

    def step_s(self, strategy, p, delay=None):
        t, c = self.allreduce_s(p), self.compute_s
        if strategy == "sync":
            return c + max(0.0, t - self.overlap * c)
        if strategy == "dasgd":
            d = self.delay_at(p) if delay is None else delay
            return c + max(0.0, t - d * c) / self.period + self.dasgd_overhead_s
        raise ValueError(f"projection covers sync and dasgd, not {strategy!r}")


def calibrate(measured, *, alpha=None, overlap=None, period=None, delay=None):
    """A Model from measured inputs; returns (model, list of assumption sentences).
    period/delay default to the benchmark's, else 1/1; delay="auto" chooses d per worker
    count. The dasgd overhead is calibrated at the benchmark's own d."""
    period = period if period is not None else (measured.period or 1)
    measured_delay = measured.delay if isinstance(measured.delay, int) else 1
    delay = measured_delay if delay is None else delay
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"--period must be an integer >= 1, got {period!r}")
    try:
        check_delay(delay)
    except ValueError as exc:
        raise ValueError(f"--{exc}") from None
    a, b = fit_alpha_beta(measured.points, alpha)
    notes = []
    if alpha is None and len({(p, n) for p, n, _ in measured.points}) >= 2:
        notes.append(f"alpha and beta fitted (least squares) to {len(measured.points)} "
                     f"measured allreduces")
    elif alpha is not None:
        notes.append(f"alpha = {a * 1e6:.3g} us per hop given by --alpha; beta solved from "
                     f"the measured allreduce")
    else:
        notes.append(f"alpha = {a * 1e6:.3g} us per hop is ASSUMED (one measured size "
                     f"cannot separate latency from bandwidth; set --alpha); beta solved "
                     f"from the measured allreduce")
    c = measured.compute_s
    t_m = float(ring_allreduce_s(measured.workers, measured.bytes, a, b))
    if overlap is not None:
        o = overlap
        notes.append(f"sync overlap o = {o:.2f} of the compute step (given by --overlap)")
    elif measured.sync_s is not None:
        # exposed = sync - c = t - o·c  =>  o = (t - exposed) / c, kept within [0, 1]
        o = min(1.0, max(0.0, (t_m - (measured.sync_s - c)) / c))
        notes.append(f"sync overlap o = {o:.2f} of the compute step, calibrated from the "
                     f"measured sync step {measured.sync_s:.4g} s at p={measured.workers}")
    else:
        o = 0.0
        notes.append("sync overlap o = 0 (no measured sync step; pessimistic)")
    if not 0.0 <= o <= 1.0:
        raise ValueError(f"--overlap must be within [0, 1], got {o}")
    model = Model(compute_s=c, bytes=measured.bytes, alpha=a, beta=b, overlap=o,
                  period=period, delay=delay)
    if measured.dasgd_s is not None:
        # Snapshot copies and the communication thread competing for cores cost time the
        # alpha-beta terms do not see; what the measurement shows beyond them is kept.
        model.dasgd_overhead_s = max(0.0, measured.dasgd_s - model.step_s(
            "dasgd", measured.workers, delay=measured_delay))
        notes.append(f"dasgd pays a fixed {model.dasgd_overhead_s:.3g} s per step beyond the "
                     f"model (measured dasgd step {measured.dasgd_s:.4g} s at "
                     f"p={measured.workers} minus the modelled one)")
    else:
        notes.append("dasgd overhead beyond the model (snapshot copy, communication thread "
                     "competing for cores) = 0: no measured dasgd step")
    notes += [
        f"compute per step c = {c:.4g} s is measured (strategy none, p={measured.workers}) "
        f"and stays constant: same batch per worker (weak scaling), no input-pipeline or "
        f"straggler effects",
        f"ring allreduce t(p) = 2(p-1)*alpha + 2(p-1)/p * n/beta with n = "
        f"{measured.bytes:.4g} bytes, alpha = {a:.3g} s, beta = {b / 1e9:.4g} GB/s "
        f"(one flat ring; no hierarchy, no contention, no tree algorithms)"
        + (f"; {measured.bytes_note}" if measured.bytes_note else ""),
        "sync exposes the part of the allreduce not overlapped with backward: "
        "c + max(0, t(p) - o*c)",
        f"dasgd (H={period}, d={delay}) hides the allreduce behind d steps of compute and "
        f"pays the rest once per H steps: c + max(0, t(p) - d*c)/H + overhead"
        + ("; d per worker count as --delay auto picks it: the smallest integer with "
           "t(p) <= d * (c + overhead), at most 8 (column dasgd_delay)" if delay == "auto"
           else ""),
        "throughput = p * batch / step; efficiency = c / step",
    ]
    return model, notes


def project(model, workers=DEFAULT_WORKERS, batch_per_rank=None):
    rows = []
    for p in workers:
        if p < 1:
            raise ValueError(f"worker counts must be positive, got {p}")
        row = {"workers": p, "allreduce_s": model.allreduce_s(p),
               "dasgd_delay": model.delay_at(p)}
        for s in ("sync", "dasgd"):
            step = model.step_s(s, p)
            row[f"{s}_step_s"] = step
            row[f"{s}_efficiency"] = model.compute_s / step
            row[f"{s}_images_per_s"] = p * batch_per_rank / step if batch_per_rank else None
        row["dasgd_over_sync"] = row["sync_step_s"] / row["dasgd_step_s"]
        rows.append(row)
    return rows


def check_rows(model, measured):
    """Model vs measurement at the measured worker count (how well the calibration fits)."""
    rows = []
    delay = measured.delay if isinstance(measured.delay, int) else 1  # the benchmark's d
    for s, value in (("sync", measured.sync_s), ("dasgd", measured.dasgd_s)):
        if value is not None:
            rows.append((s, measured.workers, value,
                         model.step_s(s, measured.workers, delay=delay)))
    return rows


def _g(x, digits=4):
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"


def to_markdown(rows, notes, checks=()):
    cols = ["workers", "allreduce_s", "dasgd_delay", "sync_step_s", "dasgd_step_s",
            "sync_efficiency",
            "dasgd_efficiency", "sync_images_per_s", "dasgd_images_per_s", "dasgd_over_sync"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r[c]) if c in ("workers", "dasgd_delay") else _g(r[c])
                             for c in cols) + " |"
            for r in rows]
    out += ["", "Assumptions:"] + [f"- {n}" for n in notes]
    if checks:
        out += ["", "Calibration check (measured vs model step, seconds):"]
        out += [f"- {s} at p={p}: measured {_g(m)}, model {_g(x)} ({(x / m - 1) * 100:+.1f} %)"
                for s, p, m, x in checks]
    return "\n".join(out) + "\n"


def plot(rows, path, title="Projected scaling (alpha-beta ring allreduce)"):
    """Write the PNG and return its path; None without matplotlib (an optional extra)."""
    from toolkit.scaling.report import pyplot
    plt = pyplot()
    if plt is None:
        return None

    ps = [r["workers"] for r in rows]
    fig, (ax_e, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in ("sync", "dasgd"):
        ax_e.plot(ps, [r[f"{s}_efficiency"] for r in rows], "o-", label=s)
        if rows[0][f"{s}_images_per_s"] is not None:
            ax_t.plot(ps, [r[f"{s}_images_per_s"] for r in rows], "o-", label=s)
            ax_t.set_ylabel("images/s")
        else:
            ax_t.plot(ps, [r["workers"] * r[f"{s}_efficiency"] for r in rows], "o-", label=s)
            ax_t.set_ylabel("speedup over one worker")
    # Ideal = p workers at the compute-only step: images/s / efficiency, or speedup p.
    ideal = [r["sync_images_per_s"] / r["sync_efficiency"] if r["sync_images_per_s"]
             else r["workers"] for r in rows]
    ax_t.plot(ps, ideal, ":", color="gray", label="ideal")
    for ax in (ax_e, ax_t):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers")
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_t.set_yscale("log")
    ax_e.set_ylabel("efficiency (1 = no communication cost)")
    ax_e.set_ylim(0, 1.05)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_workers(text):
    """'8,16,32' or '8..4096' (powers of two) -> list of ints."""
    try:
        if ".." in text:
            lo, hi = (int(x) for x in text.split(".."))
            return [2 ** k for k in range(int(math.log2(lo)), int(math.log2(hi)) + 1)
                    if lo <= 2 ** k <= hi]
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--workers {text!r}: want a list like 8,16,32 or a range 8..4096") \
            from None
