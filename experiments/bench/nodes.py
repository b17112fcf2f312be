"""Per-node-link scaling check: the allreduce timing worker, and the arithmetic that holds
the projection (launch.scaling project, calibrated on 2 nodes) against measurements on 3
and more nodes. launch/bench_nodes.py runs the jobs on emulated nodes.

    python -m experiments.bench.nodes --sizes 65536,1048576 --repeats 5 --out allreduce.json
"""
import argparse
import json
import socket
import statistics
import time

from toolkit.scaling.calibration import fit_alpha_beta, ring_allreduce_s


def time_allreduces(hvd, torch, sizes, repeats):
    """[(bytes, median seconds)] of blocking float32 averages; the first call of each
    size (connection and buffer set-up) is not timed."""
    points = []
    for nbytes in sizes:
        buf = torch.zeros(max(1, nbytes // 4))
        name = f"bench.nodes.{nbytes}"
        hvd.allreduce_(buf, op=hvd.Average, name=name)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            hvd.allreduce_(buf, op=hvd.Average, name=name)
            times.append(time.perf_counter() - start)
        # The slowest rank's view: a collective ends when the last rank has its result.
        worst = hvd.allreduce(torch.tensor([statistics.median(times)]), op=hvd.Max,
                              name=f"{name}.max")
        points.append((4 * buf.numel(), float(worst)))
    return points


def run_worker(args):
    import horovod.torch as hvd
    import torch
    hvd.init()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    points = time_allreduces(hvd, torch, sizes, args.repeats)
    hosts = hvd.allgather_object(socket.gethostname())
    if hvd.rank() == 0:
        with open(args.out, "w") as f:
            json.dump({"workers": hvd.size(), "hosts": hosts,
                       "allreduce": [{"workers": hvd.size(), "bytes": n, "seconds": s}
                                     for n, s in points]}, f, indent=1)


# --- the check ---------------------------------------------------------------------------
def relative_error(model, measured):
    return (model - measured) / measured


def fit_all(points):
    """alpha, beta fitted to every measured (workers, bytes, seconds) and the fit's largest
    relative error over the points."""
    alpha, beta = fit_alpha_beta(points)
    worst = max(abs(relative_error(float(ring_allreduce_s(p, n, alpha, beta)), s))
                for p, n, s in points)
    return {"alpha_s": alpha, "beta_bytes_per_s": beta, "max_abs_error": worst,
            "points": len(points)}


def fit_with_call_overhead(points):
    """t = t0 + 2(p-1)·alpha + 2(p-1)/p · n/beta fitted to all points (relative errors),
    all terms >= 0 (a term that comes out negative is dropped and the rest refitted).
    t0 is what every call
    pays whatever the ring's length: Horovod's negotiation and cycle, waking the ranks.
    Calibrated at one worker count, t0 and alpha cannot be told apart."""
    import numpy as np
    cols = {"t0_s": [1.0] * len(points),
            "alpha_s": [2.0 * (p - 1) for p, _, _ in points],
            "inv_beta": [2.0 * (p - 1) / p * n for p, n, _ in points]}
    t = np.array([s for _, _, s in points])
    keep = list(cols)
    while True:
        A = np.stack([np.array(cols[k]) for k in keep], 1)
        # Relative least squares: a 64 KiB message counts as much as a 4 MiB one.
        coef, *_ = np.linalg.lstsq(A / t[:, None], np.ones_like(t), rcond=None)
        if all(c >= 0 for c in coef) or len(keep) == 1:
            break
        keep = [k for k, c in zip(keep, coef) if c >= 0] or keep[-1:]
    got = dict.fromkeys(cols, 0.0)
    got.update({k: float(c) for k, c in zip(keep, coef)})
    model = A @ coef
    return {"t0_s": got["t0_s"], "alpha_s": got["alpha_s"],
            "beta_bytes_per_s": 1.0 / got["inv_beta"] if got["inv_beta"] > 0 else None,
            "max_abs_error": float(np.max(np.abs(model - t) / t)), "points": len(points)}


def compare(rows, compute_s, measured, compute_step):
    """Projection rows (launch.scaling project's JSON; `compute_s` its model's compute per
    step) against the measurement at each worker count: allreduce of the model, sync and dasgd steps. `compute_step(p)` gives the
    measured step of `none` at p: the projection keeps compute at its 2-node value, but the
    emulated nodes share this machine's cores, so compute grows with p; the corrected
    step adds the modelled communication cost (row step - row compute) to the compute
    measured at p, which isolates the network part of the model."""
    out = []
    for row in rows:
        p = row["workers"]
        if p not in measured:
            continue
        m = measured[p]
        entry = {"workers": p,
                 "allreduce_s": {"measured": m["allreduce_s"], "model": row["allreduce_s"],
                                 "error": relative_error(row["allreduce_s"], m["allreduce_s"])}}
        for s in ("sync", "dasgd"):
            model_step = row[f"{s}_step_s"]
            corrected = compute_step(p) + (model_step - compute_s)
            entry[f"{s}_step_s"] = {
                "measured": m["step_s"][s], "model": model_step,
                "error": relative_error(model_step, m["step_s"][s]),
                "model_with_measured_compute": corrected,
                "error_with_measured_compute": relative_error(corrected, m["step_s"][s])}
        out.append(entry)
    return out


def within(checks, target):
    """Whether every error with measured compute (and every allreduce error) is within
    `target` (a fraction)."""
    errors = []
    for c in checks:
        errors.append(c["allreduce_s"]["error"])
        errors += [c[f"{s}_step_s"]["error_with_measured_compute"] for s in ("sync", "dasgd")]
    return all(abs(e) <= target for e in errors)


def _pct(x):
    return f"{100 * x:+.1f} %"


def to_markdown(report):
    lines = [
        "# Scaling across per-node links (emulated nodes)", "",
        f"Reproduce: `{report['command']}`", "",
        f"{report['nodes_max']} emulated nodes on one machine ({report['cores']} cores), one "
        f"rank per node, each node's link limited to {report['rate']} (tc tbf on both ends "
        f"of its veth; the bridge between them is not limited). Model {report['model']} "
        f"({report['model_bytes'] / 1e6:.3g} MB of float32 parameters and buffers), batch "
        f"{report['batch_per_rank']} per rank, 1 thread per rank, Horovod over Open MPI "
        f"(TCP, ring allreduce forced), cycle time {report['cycle_time_ms']:g} ms.", "",
        "## Measured", "",
        "| workers | none step s | sync step s | dasgd step s | model allreduce s |",
        "|---|---|---|---|---|"]
    for p, m in sorted(report["measured"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {p} | {m['step_s']['none']:.4g} | {m['step_s']['sync']:.4g} | "
                     f"{m['step_s']['dasgd']:.4g} | {m['allreduce_s']:.4g} |")
    lines += ["", "Allreduce by message size (seconds, slowest rank's median):", "",
              "| workers | " + " | ".join(f"{n / 1e6:.3g} MB" for n in report["sizes"]) + " |",
              "|---|" + "---|" * len(report["sizes"])]
    for p, m in sorted(report["measured"].items(), key=lambda kv: int(kv[0])):
        by_size = {pt["bytes"]: pt["seconds"] for pt in m["allreduce"]}
        lines.append(f"| {p} | " + " | ".join(f"{by_size.get(n, float('nan')):.4g}"
                                             for n in report["sizes"]) + " |")
    fit = report["fit_all"]
    over = report["fit_with_call_overhead"]
    cal = report["projection_model"]
    lines += ["", "## alpha and beta", "",
              f"- calibrated on 2 nodes only (what `launch.scaling project` uses): alpha = "
              f"{cal['alpha'] * 1e6:.3g} us, beta = {cal['beta'] / 1e6:.4g} MB/s",
              f"- fitted to all {fit['points']} points (2..{report['nodes_max']} nodes): "
              f"alpha = {fit['alpha_s'] * 1e6:.3g} us, beta = "
              f"{fit['beta_bytes_per_s'] / 1e6:.4g} MB/s (largest error of the fit "
              f"{100 * fit['max_abs_error']:.1f} %)",
              f"- with a per-call constant t0 (t = t0 + 2(p-1)alpha + 2(p-1)/p n/beta), "
              f"fitted to all points: t0 = {over['t0_s'] * 1e3:.3g} ms, alpha = "
              f"{over['alpha_s'] * 1e6:.3g} us, beta = "
              + (f"{over['beta_bytes_per_s'] / 1e6:.4g} MB/s" if over["beta_bytes_per_s"]
                 else "unbounded") +
              f" (largest error {100 * over['max_abs_error']:.1f} %)",
              f"- the link: {report['rate']} = {report['link_bytes_per_s'] / 1e6:.4g} MB/s", "",
              "## The projection against the measurement", "",
              "`launch.scaling project` calibrated on the 2-node measurement, evaluated at each "
              "measured worker count. Error = (model - measured) / measured. \"measured "
              "compute\": the model's communication cost added to the `none` step measured at "
              "that worker count (the emulated nodes share the machine's cores, so compute "
              "grows with the nodes; on a real cluster it would not).", "",
              "| workers | allreduce error | sync error | dasgd error | sync error, measured "
              "compute | dasgd error, measured compute |", "|---|---|---|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['workers']} | {_pct(c['allreduce_s']['error'])} | "
                     f"{_pct(c['sync_step_s']['error'])} | {_pct(c['dasgd_step_s']['error'])} | "
                     f"{_pct(c['sync_step_s']['error_with_measured_compute'])} | "
                     f"{_pct(c['dasgd_step_s']['error_with_measured_compute'])} |")
    verdict = "met" if report["within_target"] else "NOT met"
    lines += ["", f"Target (allreduce and steps with measured compute within "
                  f"{100 * report['target']:.0f} % at every worker count): **{verdict}**.", ""]
    return "\n".join(lines)


def worker_parser():
    p = argparse.ArgumentParser(prog="python -m experiments.bench.nodes",
                                description="one rank of the allreduce-by-size timing")
    p.add_argument("--sizes", required=True, help="message sizes in bytes, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", required=True, help="JSON written by rank 0")
    return p


if __name__ == "__main__":
    run_worker(worker_parser().parse_args())
