"""One finished run of a study as a small row: its configuration, seed, final accuracies,
steps, wall time and evaluation curve (metrics.jsonl's "eval" records: step, val_acc,
test_acc; the newest record per step, as a resumed run logs some steps twice)."""
import json
import os

from experiments.studies import plan as plan_mod


def curve_of(directory):
    by_step = {}
    try:
        with open(os.path.join(directory, "metrics.jsonl")) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line torn by a kill
                if isinstance(r, dict) and r.get("kind") == "eval" and \
                        isinstance(r.get("step"), int):
                    by_step[r["step"]] = {"step": r["step"], "val_acc": r.get("val_acc"),
                                          "test_acc": r.get("test_acc")}
    except OSError:
        return []
    return [by_step[s] for s in sorted(by_step)]


def row(directory, config, seed, scale=plan_mod.SCALE):
    """The run's row, or None when it has not finished (nor diverged)."""
    summary_path = os.path.join(directory, "summary.json")
    diverged = os.path.exists(os.path.join(directory, "diverged.json"))
    summary = None
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        if summary.get("stopped_by") is not None:
            summary = None
    if summary is None and not diverged:
        return None
    curve = curve_of(directory)
    timing = {}
    if os.path.exists(os.path.join(directory, "study.json")):
        with open(os.path.join(directory, "study.json")) as f:
            timing = json.load(f)
    _, _, total, _ = plan_mod.size_of(config, scale)
    out = {"run": os.path.basename(directory), "config": config.name(), "seed": seed,
           **config.as_dict(), "diverged": diverged, "total_steps": total,
           "run_s": timing.get("seconds"), "cpu_s": timing.get("cpu_s"), "curve": curve}
    if diverged:
        with open(os.path.join(directory, "diverged.json")) as f:
            info = json.load(f)
        out.update(test_acc=None, val_acc=None, steps=curve[-1]["step"] if curve else 0,
                   wall_s=None, error=info.get("error"))
    else:
        out.update(test_acc=summary["test_acc"], val_acc=summary.get("val_acc"),
                   steps=summary["steps"], wall_s=summary.get("wall_s"),
                   step_s=summary.get("step_s"))
    return out
