"""What refreshing the whitening statistics only every k-th step costs in accuracy.

Small CNN and vit_tiny (norm="inv") on digits, k in {1, 4, 10, 50}, lr 0.1 and 1.0, three
seeds: final accuracy and the epoch reaching 97 %.  The digits training split is cut into
a training part and a validation part (fixed seed); conclusions (which k holds) are drawn on
the validation accuracy, the test accuracy is reported beside it and never used to choose.

Each run trains as launch.train does on one rank, with its pieces: the run configuration
(RunConfig: its defaults, i.e. SGD momentum 0.9, weight decay 5e-4, cosine schedule per step
to 0, here with batch 32 and strategy none), the optimizer (toolkit.optim.build_optimizer),
the schedule (toolkit.schedule.lr_at), the step (toolkit.train.train_step) and the batches
(toolkit.data.pipeline.TrainLoader, seeded by the run's seed), in one process and one thread.
Finished runs are appended to runs.jsonl in the output directory, so an interrupted study
continues where it stopped.
"""
import json
import os
import statistics
import time
from types import SimpleNamespace

import torch

from experiments.studies.digits import first_epoch_reaching, mean_std

MODELS = ("small_cnn", "vit_tiny")
KS = (1, 4, 10, 50)
LRS = (0.1, 1.0)
SEEDS = (0, 1, 2)
TARGET = 0.97
VAL_FRACTION = 0.2
VAL_SPLIT_SEED = 7
TOLERANCE = 0.005   # a k "holds" when it loses at most half a point against k = 1


def digits_splits():
    """(train, val, test) tensors pairs: the digits test split, and the training split cut
    into training and validation parts."""
    from toolkit.data import load_dataset
    bundle = load_dataset("digits")
    x, y = bundle.train.tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    n_val = int(round(VAL_FRACTION * len(y)))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val]), bundle.test.tensors


def accuracy(model, data):
    x, y = data
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).sum().item()
    model.train()
    return correct / len(y)


def run_config(model_name, stats_every, lr, seed, epochs, batch_size=32):
    """The launch.train configuration of one run (validated as launch.train validates it)."""
    from toolkit.config import RunConfig
    return RunConfig(model=model_name, norm="inv", dataset="digits", strategy="none",
                     epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                     inv_stats_every=stats_every, threads=1).validate()


class _OneRank:
    """What the `none` strategy does on one rank (NoCommunication.step: the optimizer's
    step), without starting Horovod in the study's process: train_step's `strategy`."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self):
        self.optimizer.step()


def train_run(model_name, stats_every, lr, seed, epochs, splits, batch_size=32):
    """One training run, stepped by launch.train's functions (module doc); returns its
    per-epoch validation and test accuracy."""
    from torch.utils.data import TensorDataset
    from toolkit.data import steps_per_epoch
    from toolkit.data.pipeline import TrainLoader
    from toolkit.optim import build_optimizer, parse_betas
    from toolkit.schedule import lr_at, scaled_lr
    from toolkit.train import Diverged, build_model, train_step
    cfg = run_config(model_name, stats_every, lr, seed, epochs, batch_size)
    train, val, test = splits
    torch.manual_seed(cfg.seed)
    shape = SimpleNamespace(num_classes=int(max(t[1].max() for t in splits)) + 1,
                            in_channels=train[0].shape[1], image_size=train[0].shape[-1])
    model = build_model(cfg, shape, torch.device("cpu"))
    peak_lr = scaled_lr(cfg.lr, 1, cfg.lr_scaling)
    strategy = _OneRank(build_optimizer(
        model, cfg.optimizer, lr=peak_lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, betas=parse_betas(cfg.betas), grad_clip=cfg.grad_clip))
    loader = TrainLoader(TensorDataset(*train), cfg.batch_size, 0, 1, cfg.seed, workers=0)
    steps_epoch = steps_per_epoch(len(train[1]), cfg.batch_size, 1)
    total, warmup = steps_epoch * cfg.epochs, int(cfg.warmup_epochs * steps_epoch)
    step, diverged = 0, False
    val_curve, test_curve, start = [], [], time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        for x, y in loader.epoch(epoch):
            lr_now = lr_at(step, peak_lr=peak_lr, total_steps=total, warmup_steps=warmup,
                           schedule=cfg.schedule, start_lr=cfg.lr)
            try:
                train_step(model, strategy, x, y, lr_now, amp=cfg.amp,
                           label_smoothing=cfg.label_smoothing)
            except Diverged:
                diverged = True
                break
            step += 1
        val_curve.append(accuracy(model, val))
        test_curve.append(accuracy(model, test))
        if diverged:
            break
    loader.close()
    return {"model": model_name, "stats_every": stats_every, "lr": lr, "seed": seed,
            "epochs": epochs, "val_curve": val_curve, "test_curve": test_curve,
            "final_val": val_curve[-1], "final_test": test_curve[-1],
            "epoch_val_target": first_epoch_reaching(val_curve, TARGET),
            "epoch_test_target": first_epoch_reaching(test_curve, TARGET),
            "diverged": diverged, "seconds": time.perf_counter() - start}


def run_study(out_dir, *, epochs, models=MODELS, ks=KS, lrs=LRS, seeds=SEEDS, train=True):
    """All runs, seed by seed (every k and lr of seed 0 first, so that an interrupted study
    still covers every configuration); skips runs already in runs.jsonl.  epochs: one number, or a dict model -> epochs.  Several processes may run
    disjoint parts (e.g. one model each) into the same directory: each appends whole lines.
    train=False: only the runs already finished (a report of a study still running)."""
    torch.set_num_threads(1)
    log = os.path.join(out_dir, "runs.jsonl")
    done = {}
    if os.path.exists(log):
        with open(log) as f:
            for row in map(json.loads, f):
                done[(row["model"], row["stats_every"], row["lr"], row["seed"],
                      row["epochs"])] = row
    splits = digits_splits()
    rows = []
    for seed in seeds:
        for model_name in models:
            for k in ks:
                for lr in lrs:
                    n = epochs[model_name] if isinstance(epochs, dict) else epochs
                    key = (model_name, k, lr, seed, n)
                    if key not in done and not train:
                        continue
                    if key not in done:
                        done[key] = train_run(model_name, k, lr, seed, n, splits)
                        with open(log, "a") as f:
                            f.write(json.dumps(done[key]) + "\n")
                    row = done[key]
                    rows.append(row)
                    print(f"{model_name} k={k} lr={lr:g} seed {seed}: val {row['final_val']:.4f} "
                          f"test {row['final_test']:.4f}, 97% (val) at epoch "
                          f"{row['epoch_val_target']} ({row['seconds']:.0f} s)", flush=True)
    return rows


def summarise(rows):
    """Per (model, lr, k): mean and std of the final accuracies and of the epoch reaching
    the target, and the loss in points against k = 1 of the same model and lr."""
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["lr"], r["stats_every"]), []).append(r)
    out = []
    for (model, lr, k), group in groups.items():
        val_m, val_s = mean_std([r["final_val"] for r in group])
        test_m, test_s = mean_std([r["final_test"] for r in group])
        reached = [r["epoch_val_target"] for r in group if r["epoch_val_target"]]
        out.append({"model": model, "lr": lr, "stats_every": k, "runs": len(group),
                    "epochs": max(r["epochs"] for r in group), "val_mean": val_m, "val_std": val_s, "test_mean": test_m,
                    "test_std": test_s, "reached": len(reached),
                    "epoch_mean": statistics.mean(reached) if reached else None,
                    "epoch_std": mean_std(reached)[1] if reached else None,
                    "diverged": sum(r["diverged"] for r in group)})
    base = {(s["model"], s["lr"]): s for s in out if s["stats_every"] == 1}
    for s in out:
        ref = base.get((s["model"], s["lr"]))
        s["val_loss_points"] = 100 * (ref["val_mean"] - s["val_mean"]) if ref else None
        s["test_loss_points"] = 100 * (ref["test_mean"] - s["test_mean"]) if ref else None
    return out


def largest_k_that_holds(summary):
    """Per (model, lr): the largest k whose validation accuracy is within TOLERANCE of k = 1,
    with every smaller k holding too."""
    verdict = {}
    for key in dict.fromkeys((s["model"], s["lr"]) for s in summary):
        best = 1
        for s in sorted((s for s in summary if (s["model"], s["lr"]) == key),
                        key=lambda s: s["stats_every"]):
            if s["val_loss_points"] is None or s["val_loss_points"] > 100 * TOLERANCE:
                break
            best = s["stats_every"]
        verdict[f"{key[0]} @ lr {key[1]:g}"] = best
    return verdict


def table(summary, verdict, epochs):
    def pm(m, s, scale=100, digits=2):
        return "never" if m is None else f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"
    if isinstance(epochs, dict):
        epochs = ", ".join(f"{m} {n}" for m, n in epochs.items())
    lines = [f"Epochs: {epochs}; accuracies in %; mean ± std over "
             "the seeds run (column runs); epoch reaching "
             f"{TARGET:.0%} on the validation part (runs that reached it).", "",
             "| model | lr | k | val acc | test acc | val − k=1 (points) | test − k=1 (points) "
             "| epoch to 97 % | reached | runs | diverged |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    def points(v):
        return "—" if v is None else f"{0.0 - v:+.2f}"
    for s in sorted(summary, key=lambda s: (s["model"], s["lr"], s["stats_every"])):
        lines.append(
            f"| {s['model']} | {s['lr']:g} | {s['stats_every']} | "
            f"{pm(s['val_mean'], s['val_std'])} | {pm(s['test_mean'], s['test_std'])} | "
            f"{points(s['val_loss_points'])} | {points(s['test_loss_points'])} | "
            f"{pm(s['epoch_mean'], s['epoch_std'] or 0.0, 1, 1)} | {s['reached']}/{s['runs']} | "
            f"{s['runs']} | {s['diverged']} |")
    lines += ["", "Largest k within 0.5 points of k = 1 on the validation part (every smaller "
              "k too):", ""]
    lines += [f"- {name}: k = {k}" for name, k in verdict.items()]
    return "\n".join(lines)


def plot(summary, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    models = list(dict.fromkeys(s["model"] for s in summary))
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 7), squeeze=False)
    for col, model in enumerate(models):
        for i, lr in enumerate(sorted({s["lr"] for s in summary})):
            pts = sorted((s for s in summary if s["model"] == model and s["lr"] == lr),
                         key=lambda s: s["stats_every"])
            ks = [s["stats_every"] for s in pts]
            for row, (key, label) in enumerate((("test", "final test accuracy (%)"),
                                                ("epoch", "epoch reaching 97 % (val)"))):
                ax = axes[row][col]
                if key == "test":
                    ys = [100 * s["test_mean"] for s in pts]
                    es = [100 * s["test_std"] for s in pts]
                    vs = [100 * s["val_mean"] for s in pts]
                    ax.plot(ks, vs, linestyle=":", color=f"C{i}", alpha=0.7,
                            label=f"lr {lr:g} (val)")
                else:
                    ys = [s["epoch_mean"] if s["epoch_mean"] is not None else float("nan")
                          for s in pts]
                    es = [s["epoch_std"] or 0.0 for s in pts]
                ax.errorbar(ks, ys, yerr=es, marker="o", capsize=3, color=f"C{i}",
                            label=f"lr {lr:g}")
                ax.set_xscale("log")
                ax.minorticks_off()
                ax.set_xticks(ks)
                ax.set_xticklabels([str(k) for k in ks])
                ax.set_xlabel("stats_every k")
                ax.set_ylabel(label)
                ax.set_title(f"{model} on digits")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
        if all(s["epoch_mean"] is None for s in summary if s["model"] == model):
            epochs = max(s["epochs"] for s in summary if s["model"] == model)
            axes[1][col].text(0.5, 0.5, f"no run reached {100 * TARGET:.0f} % (val)\n"
                              f"within its {epochs} epochs", ha="center", va="center",
                              transform=axes[1][col].transAxes)
            axes[1][col].set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
