"""The alpha-beta model of the per-node-link benchmark: calibrated on 2 nodes, it predicts
the model's allreduce and the sync and dasgd steps at more nodes (launch.bench_nodes holds
the predictions against the measurements there). docs/multinode.md explains the terms.

Allreduce of n bytes on p workers (Open MPI's ring is forced): 2(p-1) sequential hops, each
moving n/p bytes, so w(p, n) = 2(p-1)/p * n bytes cross each node's link. The 2-node
calibration fits t = a + w/beta to the measured sizes; at one worker count the intercept
`a` cannot tell a latency per hop from a constant per call, so two readings of it predict
larger counts:
  per_hop   t(p, n) = 2(p-1) * alpha + w(p, n)/beta, alpha = a/2   (the textbook model)
  per_call  t(p, n) = a + w(p, n)/beta                              (Horovod's negotiation,
            cycle and wake-ups cost the same whatever the ring's length)
  per_piece t(p, n) = (p-1) * t2(2n/p)                              (each of the 2(p-1)
            hops moves a piece of n/p bytes, as each of the 2 hops of a 2-node allreduce of
            2n/p bytes does: the per-hop cost is read off the 2-node measurements at that
            piece size, interpolated between the measured sizes, so a bandwidth or latency
            that depends on the piece size is carried over without a formula for it)
Steps, with c the step of `none` (the compute) and T(p) the model's allreduce:
  sync   c + max(0, T(p) + e)          e = what sync paid at 2 nodes beyond c + T(2):
                                        negative when the allreduce overlaps the backward
  dasgd  max(c + delta, T(p)/H + eps)  the averages travel one after another while the
                                        ranks compute: the step is the compute's, or the
                                        link's time per average once the link cannot carry
                                        one average per H steps (a longer delay cannot
                                        help then). delta (compute-bound at 2 nodes) or eps
                                        (link-bound there) is calibrated, the other is 0.
"""
import numpy as np

VARIANTS = ("per_hop", "per_call", "per_piece")


def hops(p):
    return 2.0 * (p - 1)


def wire_bytes(p, nbytes):
    """Bytes one node sends (and receives) in a ring allreduce of `nbytes`."""
    return 2.0 * (p - 1) / p * nbytes


def _relative_lstsq(columns, seconds):
    """Coefficients >= 0 minimising the relative errors (a 64 KiB message counts as much as
    a 4 MiB one); a column whose coefficient comes out negative is dropped and the rest
    refitted. Returns {column name: coefficient}."""
    t = np.asarray(seconds, dtype=float)
    keep = list(columns)
    while True:
        a = np.stack([np.asarray(columns[k], dtype=float) for k in keep], 1)
        coef, *_ = np.linalg.lstsq(a / t[:, None], np.ones_like(t), rcond=None)
        if all(c >= 0 for c in coef) or len(keep) == 1:
            break
        keep = [k for k, c in zip(keep, coef) if c >= 0] or keep[-1:]
    got = dict.fromkeys(columns, 0.0)
    got.update({k: float(c) for k, c in zip(keep, coef)})
    return got


def calibrate_allreduce(points):
    """points: [(workers, bytes, seconds)] measured at ONE worker count. Returns
    {workers, intercept_s, beta_bytes_per_s}; ValueError when the times do not grow with
    the size (no bandwidth to calibrate)."""
    counts = {p for p, _, _ in points}
    if len(counts) != 1 or len(points) < 2:
        raise ValueError(f"calibration needs several sizes at one worker count, got {points}")
    got = _relative_lstsq({"a": [1.0] * len(points),
                           "inv_beta": [wire_bytes(p, n) for p, n, _ in points]},
                          [s for _, _, s in points])
    if got["inv_beta"] <= 0:
        raise ValueError("allreduce times do not grow with the message size: no bandwidth "
                         "to calibrate")
    return {"workers": counts.pop(), "intercept_s": got["a"],
            "beta_bytes_per_s": 1.0 / got["inv_beta"],
            "points": sorted((n, s) for _, n, s in points)}


def calibration_s(cal, nbytes):
    """The calibration count's allreduce of `nbytes`: interpolated between the measured
    sizes, the fitted line outside them."""
    sizes = [n for n, _ in cal["points"]]
    if sizes[0] <= nbytes <= sizes[-1]:
        return float(np.interp(nbytes, sizes, [s for _, s in cal["points"]]))
    return cal["intercept_s"] + wire_bytes(cal["workers"], nbytes) / cal["beta_bytes_per_s"]


def allreduce_s(cal, p, nbytes, variant="per_hop"):
    """The calibrated model's allreduce of `nbytes` on p workers."""
    band = wire_bytes(p, nbytes) / cal["beta_bytes_per_s"]
    if variant == "per_hop":
        return hops(p) * cal["intercept_s"] / hops(cal["workers"]) + band
    if variant == "per_call":
        return cal["intercept_s"] + band
    if variant == "per_piece":
        # a piece of n/p bytes per hop, as a calibration allreduce of q*n/p bytes has
        q = cal["workers"]
        return hops(p) / hops(q) * calibration_s(cal, q * nbytes / p)
    raise ValueError(f"unknown model variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def calibrate_steps(cal, nbytes, step_s, period, variant="per_hop"):
    """The step model's constants from the calibration's steps ({none, sync, dasgd})."""
    p = cal["workers"]
    c, t = step_s["none"], allreduce_s(cal, p, nbytes, variant)
    out = {"compute_s": c, "sync_extra_s": step_s["sync"] - c - t, "period": period,
           "dasgd_delta_s": 0.0, "dasgd_eps_s": 0.0}
    if t / period >= c:  # link-bound at the calibration: the link's extra is what shows
        out["dasgd_eps_s"] = step_s["dasgd"] - t / period
    else:
        out["dasgd_delta_s"] = step_s["dasgd"] - c
    return out


def predict_steps(cal, steps, nbytes, p, variant="per_hop", compute_s=None):
    """{allreduce_s, sync_s, dasgd_s} at p workers; compute_s: the compute step to use (the
    calibration's by default)."""
    c = steps["compute_s"] if compute_s is None else compute_s
    t = allreduce_s(cal, p, nbytes, variant)
    return {"allreduce_s": t, "sync_s": c + max(0.0, t + steps["sync_extra_s"]),
            "dasgd_s": max(c + steps["dasgd_delta_s"],
                           t / steps["period"] + steps["dasgd_eps_s"])}


def relative_error(model, measured):
    return (model - measured) / measured


def fit_all(points):
    """t = t0 + 2(p-1) alpha + w(p, n)/beta fitted to every measured (workers, bytes,
    seconds) of every worker count, terms >= 0 (relative least squares): the fit, and each
    point's relative error, to show where the model's shape fails."""
    got = _relative_lstsq({"t0_s": [1.0] * len(points),
                           "alpha_s": [hops(p) for p, _, _ in points],
                           "inv_beta": [wire_bytes(p, n) for p, n, _ in points]},
                          [s for _, _, s in points])
    beta = 1.0 / got["inv_beta"] if got["inv_beta"] > 0 else None
    residuals = []
    for p, n, s in points:
        model = got["t0_s"] + hops(p) * got["alpha_s"] + \
            (wire_bytes(p, n) / beta if beta else 0.0)
        residuals.append({"workers": p, "bytes": n, "measured_s": s, "model_s": model,
                          "error": relative_error(model, s)})
    return {"t0_s": got["t0_s"], "alpha_s": got["alpha_s"], "beta_bytes_per_s": beta,
            "max_abs_error": max(abs(r["error"]) for r in residuals),
            "points": residuals}
