"""Collect the summary.json of finished runs into a scaling table (markdown, CSV, PNG).

Speedup and efficiency are relative to the smallest worker count of the same (mode,
strategy) group: speedup = throughput / baseline throughput, efficiency = speedup / (workers
/ baseline workers). For weak scaling that is throughput per worker kept; for strong scaling
(fixed global batch) it is the usual time-to-solution efficiency, since time ∝ 1/throughput.
"""
import csv
import json
import os
from dataclasses import dataclass

from toolkit.scaling.sweep import MARKER

REQUIRED = ("strategy", "world_size", "images_per_s")
COLUMNS = ("mode", "strategy", "workers", "batch_per_rank", "global_batch", "images_per_s",
           "speedup", "efficiency", "vs_sync", "step_s", "comm_wait_s", "test_acc", "run")


@dataclass
class Run:
    mode: str
    strategy: str
    workers: int
    batch_per_rank: int
    global_batch: int
    images_per_s: float
    step_s: float
    comm_wait_s: float
    test_acc: float
    run: str
    mtime: float
    speedup: float = None
    efficiency: float = None
    vs_sync: float = None


def _load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def load_run(run_dir):
    """One Run from run_dir/summary.json (+ scaling.json from the sweep, if present)."""
    path = os.path.join(run_dir, "summary.json")
    summary = _load_json(path)
    if not isinstance(summary, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    missing = [k for k in REQUIRED if k not in summary]
    if missing:
        raise ValueError(f"{path} lacks key(s) {', '.join(missing)}")
    marker = os.path.join(run_dir, MARKER)
    meta = _load_json(marker) if os.path.exists(marker) else {}
    workers = int(summary["world_size"])
    if workers < 1 or float(summary["images_per_s"]) <= 0:
        raise ValueError(f"{path}: world_size and images_per_s must be positive")
    get = summary.get
    return Run(mode=meta.get("mode", "-"), strategy=str(summary["strategy"]), workers=workers,
               batch_per_rank=get("batch_per_rank"), global_batch=get("global_batch"),
               images_per_s=float(summary["images_per_s"]), step_s=get("step_s"),
               comm_wait_s=get("comm_wait_s"), test_acc=get("test_acc"),
               run=os.path.basename(os.path.normpath(run_dir)), mtime=os.path.getmtime(path))


def stopped_early(run_dir):
    """True when the run's summary.json says a signal stopped it before the end (a
    preempted run writes one too; the sweep resubmits it with --resume)."""
    return bool(_load_json(os.path.join(run_dir, "summary.json")).get("stopped_by"))


def find_runs(root):
    """(finished run dirs, run dirs without a final summary.json: still queued or running,
    failed, or stopped before the end)."""
    if not os.path.isdir(root):
        raise ValueError(f"run directory not found: {root}")
    done, unfinished = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "checkpoints")
        if "summary.json" in filenames and not stopped_early(dirpath):
            done.append(dirpath)
        elif "summary.json" in filenames or MARKER in filenames:
            unfinished.append(dirpath)
    return done, unfinished


def build_table(runs):
    """Deduplicate (newest run wins), sort and fill speedup / efficiency / vs_sync."""
    latest = {}
    for r in runs:
        key = (r.mode, r.strategy, r.workers)
        if key not in latest or r.mtime > latest[key].mtime:
            latest[key] = r
    table = sorted(latest.values(), key=lambda r: (r.mode, r.strategy, r.workers))
    base = {}
    for r in table:
        b = base.setdefault((r.mode, r.strategy), r)
        r.speedup = r.images_per_s / b.images_per_s
        r.efficiency = r.speedup / (r.workers / b.workers)
        sync = latest.get((r.mode, "sync", r.workers))
        r.vs_sync = r.images_per_s / sync.images_per_s if sync else None
    return table


def _fmt(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def to_markdown(table, unfinished=()):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in table:
        lines.append("| " + " | ".join(_fmt(getattr(r, c)) for c in COLUMNS) + " |")
    if unfinished:
        lines.append("")
        lines.append("Runs not finished (still running, failed, or stopped by a signal "
                     "before the end: see their slurm-*.out; a sweep re-run resumes them): "
                     + ", ".join(os.path.basename(u) for u in unfinished))
    return "\n".join(lines) + "\n"


def write_csv(table, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in table:
            w.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in COLUMNS])


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib (an optional extra:
    pip install matplotlib) is missing: tables are still written, the PNG is skipped."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # batch nodes have no display
    import matplotlib.pyplot as plt
    return plt


def plot(table, path):
    plt = pyplot()
    if plt is None:
        return None

    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = {}
    for r in table:
        groups.setdefault((r.mode, r.strategy), []).append(r)
    for (mode, strategy), rs in groups.items():
        label = strategy if mode == "-" else f"{mode} {strategy}"
        xs = [r.workers for r in rs]
        line, = ax_t.plot(xs, [r.images_per_s for r in rs], "o-", label=label)
        ax_e.plot(xs, [r.efficiency for r in rs], "o-", label=label, color=line.get_color())
        ideal = [rs[0].images_per_s * x / rs[0].workers for x in xs]
        ax_t.plot(xs, ideal, ":", color=line.get_color(), linewidth=1)
    for ax in (ax_t, ax_e):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers")
        ax.grid(True, alpha=0.3)
    ax_t.set_ylabel("images/s (dotted: ideal)")
    ax_t.set_yscale("log")
    ax_e.set_ylabel("efficiency (1 = ideal)")
    ax_e.set_ylim(0, max(1.1, max((r.efficiency for r in table), default=1) * 1.05))
    ax_e.legend()
    fig.suptitle("Measured scaling")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_report(root, prefix=None):
    """Write <prefix>.md/.csv/.png (default prefix: root/scaling_report) and return
    (markdown text, {kind: path})."""
    done, unfinished = find_runs(root)
    if not done:
        raise ValueError(f"no finished runs under {root}: no */summary.json of a run that "
                         f"reached its end")
    table = build_table([load_run(d) for d in done])
    prefix = prefix or os.path.join(root, "scaling_report")
    paths = {"md": prefix + ".md", "csv": prefix + ".csv", "png": prefix + ".png"}
    text = to_markdown(table, unfinished)
    with open(paths["md"], "w") as f:
        f.write("# Scaling report\n\n" + text)
    write_csv(table, paths["csv"])
    if plot(table, paths["png"]) is None:
        del paths["png"]
        text += "\n(no plot: matplotlib is not installed; pip install matplotlib)\n"
    return text, paths
