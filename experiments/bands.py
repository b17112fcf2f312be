"""Accuracy against steps across seeds: the mean and its 95 % t-interval at each evaluation
step (experiments/studies/verdicts.py), drawn as a line and a shaded band.

Runs are grouped by their configuration without the seed (config.json); a group's label
names the options that set it apart from the other groups. A run that diverged stops
logging where it diverged: later steps have fewer seeds (the band is drawn where >= 2).
"""
import json
import os

from experiments.curves import NotARun, _pyplot
from experiments.studies.results import curve_of
from experiments.studies.verdicts import interval

# config.json entries that do not make a configuration different
NOT_CONFIG = {"seed", "out", "resume", "config", "data_dir", "progress", "debug", "keep",
              "launcher", "checkpoint_interval", "log_interval", "workers", "threads"}


def band(curves, key):
    """[{step, mean, lo, hi, n}] of `key` over the seeds' curves ([{step, key}] each)."""
    steps = sorted({p["step"] for c in curves for p in c if p.get(key) is not None})
    rows = []
    for step in steps:
        values = [p[key] for c in curves for p in c
                  if p["step"] == step and p.get(key) is not None]
        ci = interval(values)
        rows.append({"step": step, "mean": ci["mean"], "lo": ci["lo"], "hi": ci["hi"],
                     "n": ci["n"]})
    return rows


def group_runs(directories):
    """[(label, [curve per run])] of run directories, one group per configuration."""
    groups = {}
    for d in directories:
        try:
            with open(os.path.join(d, "config.json")) as f:
                config = json.load(f)
        except (OSError, ValueError):
            raise NotARun(f"{d} is not a training run (no readable config.json)") from None
        curve = curve_of(d)
        if not curve:
            raise NotARun(f"{d} has no evaluation records (eval) in metrics.jsonl")
        key = tuple(sorted((k, json.dumps(v)) for k, v in config.items()
                           if k not in NOT_CONFIG))
        groups.setdefault(key, []).append(curve)
    keys = list(groups)
    differing = sorted({k for key in keys for k, _ in key
                        if len({dict(other).get(k) for other in keys}) > 1})
    labels = [", ".join(f"{k}={json.loads(dict(key)[k])}" for k in differing) or "runs"
              for key in keys]
    return [(label, groups[key]) for label, key in zip(labels, keys)]


def plot_bands(panels, path, key="test_acc", title=None):
    """panels: [(panel title, [(label, [curve per seed])])]; writes the PNG, returns path."""
    plt = _pyplot()
    cols = min(2, len(panels))
    rows_ = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(6.5 * cols, 4.5 * rows_), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (panel_title, groups) in zip(axes.flat, panels):
        for i, (label, curves) in enumerate(groups):
            rows = band(curves, key)
            steps = [r["step"] for r in rows]
            ax.plot(steps, [100 * r["mean"] for r in rows], color=f"C{i}", marker="o",
                    markersize=2.5, label=f"{label} (n={len(curves)})")
            ok = [r for r in rows if r["lo"] is not None]
            ax.fill_between([r["step"] for r in ok], [100 * r["lo"] for r in ok],
                            [100 * r["hi"] for r in ok], color=f"C{i}", alpha=0.18,
                            linewidth=0)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{key.replace('_acc', '')} accuracy (%), mean and 95 % CI")
        ax.set_ylim(0, 100)  # an interval of few seeds reaches past what accuracy can be
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
