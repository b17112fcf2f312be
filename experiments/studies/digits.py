"""Repeatable studies over many launch.train runs: the learning-rate science check and
the DaSGD-vs-sync convergence comparison. Each run is a real job (mpirun for several ranks);
the results are tables (markdown + JSON) and, when matplotlib is present, a PNG.
"""
import json
import os
import statistics
import subprocess
import sys

from toolkit.mpi_policy import launcher_env, mpirun_argv

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_training(out, ranks, args):
    """One launch.train job; returns (summary, per-epoch test accuracies)."""
    argv = [sys.executable, "-m", "launch.train", "--out", out, *map(str, args)]
    cmd = mpirun_argv(ranks, argv) if ranks > 1 else argv
    env = launcher_env({"PYTHONPATH": REPO})
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"run {out} failed ({proc.returncode}): "
                           f"{proc.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        curve = [r["test_acc"] for r in map(json.loads, f) if r["kind"] == "epoch"]
    return summary, curve


def first_epoch_reaching(curve, target):
    return next((i + 1 for i, acc in enumerate(curve) if acc >= target), None)


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def lr_check(out_dir, *, seeds=(0, 1, 2), epochs=15, configs=None, ranks=1, target=0.97):
    """The paper's claim: the invariance layer trains at lr 1.0 and needs fewer iterations
    than BatchNorm. Same model, data, schedule and seeds for every configuration."""
    configs = configs or [("inv", 1.0), ("inv", 0.1), ("bn", 0.1), ("bn", 0.05)]
    rows = []
    for norm, lr in configs:
        for seed in seeds:
            run = os.path.join(out_dir, f"{norm}_lr{lr:g}_seed{seed}")
            summary, curve = run_training(run, ranks, [
                "--model", "small_cnn", "--dataset", "digits", "--norm", norm, "--lr", lr,
                "--lr-scaling", "none", "--strategy", "sync" if ranks > 1 else "none",
                "--epochs", epochs, "--seed", seed, "--threads", "1"])
            rows.append({"norm": norm, "lr": lr, "seed": seed, "curve": curve,
                         "final_acc": summary["test_acc"],
                         "epoch_to_target": first_epoch_reaching(curve, target)})
            print(f"{norm}@{lr:g} seed {seed}: final {summary['test_acc']:.4f}, "
                  f"{target:.0%} at epoch {rows[-1]['epoch_to_target']}", flush=True)
    return rows


def convergence(out_dir, *, seeds=(0, 1, 2), epochs=15, ranks=(2, 4), norm="bn", lr=0.05):
    """dasgd vs sync at equal epochs, several seeds and worker counts."""
    rows = []
    for n in ranks:
        for strategy in ("sync", "dasgd"):
            for seed in seeds:
                run = os.path.join(out_dir, f"{strategy}_np{n}_seed{seed}")
                summary, curve = run_training(run, n, [
                    "--model", "small_cnn", "--dataset", "digits", "--norm", norm,
                    "--lr", lr, "--strategy", strategy, "--epochs", epochs, "--seed", seed,
                    "--threads", "1"])
                rows.append({"ranks": n, "strategy": strategy, "seed": seed,
                             "final_acc": summary["test_acc"], "curve": curve})
                print(f"{strategy} np={n} seed {seed}: final {summary['test_acc']:.4f}",
                      flush=True)
    return rows


def lr_check_table(rows, target=0.97):
    lines = ["| config | seed | epoch reaching {:.0%} | final test acc |".format(target),
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['norm']} @ lr {r['lr']:g} | {r['seed']} | "
                     f"{r['epoch_to_target'] or 'never'} | {r['final_acc']:.4f} |")
    lines += ["", "| config | mean final acc | std | mean epoch reaching target |",
              "|---|---|---|---|"]
    for key in dict.fromkeys((r["norm"], r["lr"]) for r in rows):
        group = [r for r in rows if (r["norm"], r["lr"]) == key]
        m, s = mean_std([r["final_acc"] for r in group])
        reached = [r["epoch_to_target"] for r in group if r["epoch_to_target"]]
        when = f"{statistics.mean(reached):.1f} ({len(reached)}/{len(group)} runs)" \
            if reached else "never"
        lines.append(f"| {key[0]} @ lr {key[1]:g} | {m:.4f} | {s:.4f} | {when} |")
    return "\n".join(lines)


def convergence_table(rows):
    lines = ["| ranks | strategy | seed | final test acc |", "|---|---|---|---|"]
    lines += [f"| {r['ranks']} | {r['strategy']} | {r['seed']} | {r['final_acc']:.4f} |"
              for r in rows]
    lines += ["", "| ranks | sync mean | dasgd mean | dasgd - sync (points) |",
              "|---|---|---|---|"]
    for n in dict.fromkeys(r["ranks"] for r in rows):
        means = {s: statistics.mean(r["final_acc"] for r in rows
                                    if r["ranks"] == n and r["strategy"] == s)
                 for s in ("sync", "dasgd")}
        lines.append(f"| {n} | {means['sync']:.4f} | {means['dasgd']:.4f} | "
                     f"{100 * (means['dasgd'] - means['sync']):+.2f} |")
    return "\n".join(lines)


def plot_curves(rows, label_of, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for r in rows:
        label = label_of(r)
        color = colors.setdefault(label, f"C{len(colors)}")
        ax.plot(range(1, len(r["curve"]) + 1), r["curve"], color=color, alpha=0.8,
                label=label if label not in ax.get_legend_handles_labels()[1] else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.8, 1.0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
