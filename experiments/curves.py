"""Plots of training runs: training loss, test accuracy and images/s against steps and
against wall time, one line per run, labelled model/norm/strategy/ranks.

A run directory is what launch.train writes: metrics.jsonl (one JSON object per line,
kind "interval" every --log-interval steps, kind "epoch" after each evaluation) and
config.json; summary.json when the run finished. matplotlib is optional: without it
plotting raises PlotUnavailable and callers print a one-line note.
"""
import json
import os
from dataclasses import dataclass, field

PLOT_NAME = "plot.png"
_PANELS = (("train loss", "interval", "loss"),
           ("test accuracy (%)", "epoch", "test_acc"),
           ("images/s (all ranks)", "interval", "images_per_s"))


class NotARun(ValueError):
    """The directory is not a training run (one line naming it)."""


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


@dataclass
class Run:
    directory: str
    label: str
    interval: list = field(default_factory=list)  # records of kind "interval", by step
    epoch: list = field(default_factory=list)  # records of kind "epoch", by step
    start_time: float = 0.0


def _read_json(path):
    try:
        with open(path) as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_records(path):
    """Parsed lines of metrics.jsonl; a line torn by a crash is skipped."""
    records = []
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


def _latest_per_step(records, kind):
    """One record per step, the newest: a run resumed from an earlier checkpoint logs
    some steps again, and the second pass is the one that led to the final model."""
    by_step = {}
    for record in records:
        if record.get("kind") == kind:
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def run_label(config):
    ranks = config.get("world_size", "?")
    return (f"{config.get('model', '?')}/{config.get('norm', '?')}/"
            f"{config.get('strategy', '?')}/{ranks} rank{'s' if ranks != 1 else ''}")


def load_run(directory):
    """The run in `directory`; NotARun unless it holds metrics.jsonl and config.json."""
    if not os.path.isdir(directory):
        raise NotARun(f"{directory} is not a directory")
    metrics = os.path.join(directory, "metrics.jsonl")
    config = _read_json(os.path.join(directory, "config.json"))
    if not os.path.isfile(metrics) or config is None:
        raise NotARun(f"{directory} is not a training run (needs metrics.jsonl and "
                      f"config.json as written by launch.train)")
    config = {**config, **(_read_json(os.path.join(directory, "summary.json")) or {})}
    records = _read_records(metrics)
    if not records:
        raise NotARun(f"{directory} is a run without any logged step yet ({metrics} is empty)")
    return Run(directory=directory, label=run_label(config),
               interval=_latest_per_step(records, "interval"),
               epoch=_latest_per_step(records, "epoch"),
               start_time=min(r.get("time", 0.0) for r in records))


def _distinct_labels(runs):
    """Runs with the same configuration are told apart by their directory name."""
    labels = [r.label for r in runs]
    return [f"{r.label} ({os.path.basename(os.path.normpath(r.directory))})"
            if labels.count(r.label) > 1 else r.label for r in runs]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("matplotlib is not installed: no plot (pip install "
                              "matplotlib)") from None
    matplotlib.use("Agg")  # batch nodes have no display
    import matplotlib.pyplot as plt
    return plt


def _time_unit(runs):
    """Seconds, minutes or hours, whichever keeps the longest run's axis readable."""
    longest = max((r.get("time", run.start_time) - run.start_time
                   for run in runs for r in run.interval + run.epoch), default=0.0)
    if longest < 180:
        return 1.0, "s"
    return (60.0, "min") if longest < 3 * 3600 else (3600.0, "h")


def plot_runs(runs, out_path):
    """Write the figure of `runs` (from load_run) to out_path; returns out_path."""
    plt = _pyplot()
    divisor, unit = _time_unit(runs)
    figure, axes = plt.subplots(len(_PANELS), 2, figsize=(12, 10), squeeze=False)
    for run, label in zip(runs, _distinct_labels(runs)):
        for row, (title, kind, key) in enumerate(_PANELS):
            points = [r for r in getattr(run, kind) if isinstance(r.get(key), (int, float))]
            steps = [r["step"] for r in points]
            elapsed = [(r.get("time", run.start_time) - run.start_time) / divisor
                       for r in points]
            values = [100 * r[key] if key == "test_acc" else r[key] for r in points]
            style = dict(marker="o", markersize=3) if kind == "epoch" else {}
            axes[row][0].plot(steps, values, label=label, **style)
            axes[row][1].plot(elapsed, values, label=label, **style)
    for row, (title, _, _) in enumerate(_PANELS):
        for col, xlabel in enumerate(("step", f"wall time since the first log line ({unit})")):
            axis = axes[row][col]
            axis.set_title(f"{title} vs {'steps' if col == 0 else 'wall time'}", fontsize=10)
            axis.set_xlabel(xlabel)
            axis.set_ylabel(title)
            axis.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return out_path


def plot_run_directory(directory):
    """The plot of one run written into its directory (PLOT_NAME); returns its path."""
    return plot_runs([load_run(directory)], os.path.join(directory, PLOT_NAME))


def plot_finished_run(directory):
    """Writes the run's plot at the end of training; returns the line to print. Never
    raises: a missing matplotlib or an unwritable plot must not fail a finished run."""
    try:
        path = plot_run_directory(directory)
    except PlotUnavailable as exc:
        return f"note: {exc}"
    except (NotARun, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"note: no {PLOT_NAME} ({reason})"
    return f"plot: {path}"
