"""python -m launch.study staleness|refresh-rules --out DIR: the measurements of
experiments/studies/staleness.py, their JSON (with provenance), table and plot.

staleness:     probe() of each model at its lr: losses of the same batches with the running
               averages, the last refresh's statistics and their own; drift per layer.
refresh-rules: trials() of every refresh rule against k = 1, one seed, short runs; with
               --bench (a launch.bench_layer JSON) each rule's cost beside its accuracy
               (the frontier plot).
"""
import argparse
import json
import os
import sys

from experiments.provenance import provenance, start

PROBES = {"small_cnn": 1.0, "vit_tiny": 0.1}
TRIALS = [("small_cnn", 0.1), ("small_cnn", 1.0), ("vit_tiny", 0.1)]
RULES = ("k1", "ema", "last", "center", "batch", "sampled")


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def parser():
    p = argparse.ArgumentParser(prog="python -m launch.study staleness|refresh-rules",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=["staleness", "refresh-rules"])
    p.add_argument("--out", required=True, help="directory for the JSON, table and plot")
    p.add_argument("--train-subset", type=positive, default=4096)
    p.add_argument("--val-size", type=positive, default=1000)
    p.add_argument("--steps", type=positive, default=100,
                   help="staleness: steps per probe; refresh-rules: steps of the small_cnn "
                        "trials")
    p.add_argument("--vit-steps", type=positive, default=120,
                   help="refresh-rules: steps of the vit_tiny trials")
    p.add_argument("--models", nargs="+", choices=sorted(PROBES), default=sorted(PROBES))
    p.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    p.add_argument("--bench", help="refresh-rules: a launch.bench_layer JSON with "
                                   "refresh_over_bn (the cost of each rule)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv):
    started = start()
    p = parser()
    args = p.parse_args(argv)
    if args.bench and not os.path.isfile(args.bench):
        p.error(f"--bench {args.bench} does not exist")
    import torch
    from experiments.studies import staleness
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    train, val = staleness.fashion_splits(args.train_subset, args.val_size, args.seed)
    if args.study == "staleness":
        runs = [staleness.probe(m, PROBES[m], args.steps, train, args.seed)
                for m in args.models]
        report = {"summary": [staleness.probe_summary(r) for r in runs], "runs": runs}
        text, png = probe_table(report), probe_plot(runs, os.path.join(args.out,
                                                                      "staleness.png"))
    else:
        rows = []
        for model, lr in TRIALS:
            if model not in args.models:
                continue
            steps = args.vit_steps if model == "vit_tiny" else args.steps
            for rule in args.rules:
                rows.append(staleness.trial(model, lr, rule, steps, train, val, args.seed))
                print(f"{model} lr {lr:g} {rule}: val {rows[-1]['val_acc']:.3f}", flush=True)
        cost = json.load(open(args.bench)).get("refresh_over_bn", {}) if args.bench else {}
        report = {"trials": rows, "cost": cost}
        text = rules_table(rows, cost)
        png = frontier_plot(rows, cost, os.path.join(args.out, "refresh_rules.png"))
    name = args.study.replace("-", "_")
    report["provenance"] = provenance(argv, started, threads=1, module="launch.study")
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(header(args.study, report["provenance"]) + text + f"\n\n![plot]({name}.png)\n")
    print(text)
    print(f"plot: {png}")
    return 0


TITLES = {
    "staleness": "# Why stale whitening fails\n\nFashion-MNIST subset, statistics every "
                 "10th step past the warm start, refresh ema (the running averages). Losses "
                 "of the same batch before its step: with the running averages (what the "
                 "stale step folds; on stale steps also its training loss), with the last "
                 "refresh step's statistics, and with its own (k = 1). Drift: relative "
                 "Frobenius distance of D to the batch's own D, and the RMS shift of the "
                 "centring in whitened units, mean over the layers, on the first stale step "
                 "of every period. Per step and per layer in the JSON.",
    "refresh-rules": "# Refresh rules: cost and accuracy\n\nFashion-MNIST subset, one seed, "
                     "short runs (cosine lr to 0 over the run, batch 32, SGD momentum 0.9); "
                     "every rule with statistics every 10th step against k = 1 (`k1`); "
                     "validation accuracy at the end (eval mode: the running averages). "
                     "Cost: the rule's step over the BatchNorm step in the launch.bench_layer "
                     "JSON named in the command (k = 10, whole periods).",
}


def header(study, prov):
    """Title, what was measured, and the command with its provenance."""
    state = "loaded machine (timings inflated)" if prov.get("loaded") else "quiet machine"
    dirty = ", uncommitted changes" if prov.get("dirty") else ""
    return (f"{TITLES[study]}\n\n`{prov.get('command')}` (commit {prov.get('commit')}{dirty}; "
            f"{state}, load {prov['load_start'][0]:.1f} at start on {prov.get('cores')} "
            f"cores; {prov.get('wall_s', 0):.0f} s)\n\n")


def probe_table(report):
    lines = ["| model | lr | loss before first stale step | first stale step: train (EMA) "
             "| last refresh | fresh | D drift EMA / last, 1st stale step of a period "
             "| same, last step of a period | mean shift EMA / last, 1st stale step "
             "| diverged |", "|" + "---|" * 10]
    for s in report["summary"]:
        def f(key):
            v = s.get(key)
            return "-" if v is None else f"{v:.3g}"
        lines.append(f"| {s['model']} | {s['lr']:g} | {f('loss_before_first_stale')} | "
                     f"{f('first_stale_loss_ema')} | {f('first_stale_loss_last')} | "
                     f"{f('first_stale_loss_fresh')} | {f('drift_ema_D_first_stale')} / "
                     f"{f('drift_last_D_first_stale')} | {f('drift_ema_D_period_end')} / "
                     f"{f('drift_last_D_period_end')} | {f('drift_ema_mean_first_stale')} / "
                     f"{f('drift_last_mean_first_stale')} | {s['diverged']} |")
    return "\n".join(lines)


def probe_plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(runs), figsize=(6 * len(runs), 7), squeeze=False)
    for col, run in enumerate(runs):
        rows = run["steps"]
        ax = axes[0][col]
        for key, label in (("loss_ema", "running averages (EMA)"),
                           ("loss_last", "last refresh"), ("loss_fresh", "own batch")):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*pts), label=label)
        ax.set_yscale("log")
        ax.set_title(f"{run['model']} lr {run['lr']:g}, k={run['k']}: loss of the same batch")
        ax.axvline(run["warm_start"], color="grey", ls=":")
        ax.legend()
        ax = axes[1][col]
        for key, label in (("drift_ema", "EMA"), ("drift_last", "last refresh")):
            pts = [(r["step"], sum(v[0] for v in r[key]) / len(r[key])) for r in rows
                   if key in r]
            ax.plot(*zip(*pts), label=f"{label}: |D - D_fresh| / |D_fresh|")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def rules_table(rows, cost):
    base = {(r["model"], r["lr"]): r["val_acc"] for r in rows if r["rule"] == "k1"}
    lines = ["| model | lr | rule | steps | val acc | minus k=1 (points) | loss, last 10 steps "
             "| cost / BN (ResNet-18) | cost / BN (vit_tiny) |", "|" + "---|" * 9]
    for r in rows:
        b = base.get((r["model"], r["lr"]))
        diff = "-" if b is None else f"{100 * (r['val_acc'] - b):+.1f}"
        c = cost.get(r["rule"], {})
        lines.append(f"| {r['model']} | {r['lr']:g} | {r['rule']} | {r['steps']} | "
                     f"{100 * r['val_acc']:.1f} | {diff} | {r['loss_last_period']:.3g} | "
                     f"{_num(c.get('resnet18_cifar'))} | {_num(c.get('vit_tiny'))} |")
    return "\n".join(lines)


def _num(v):
    return "-" if v is None else f"{v:.2f}"


def frontier_plot(rows, cost, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = {(r["model"], r["lr"]): r["val_acc"] for r in rows if r["rule"] == "k1"}
    fig, ax = plt.subplots(figsize=(7, 5))
    for key in base:
        pts = [(cost.get(r["rule"], {}).get("resnet18_cifar"), 100 * (r["val_acc"] - base[key]),
                r["rule"]) for r in rows if (r["model"], r["lr"]) == key]
        pts = [p for p in pts if p[0] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=f"{key[0]} lr {key[1]:g}")
            for x, y, rule in pts:
                ax.annotate(rule, (x, y), fontsize=8)
    ax.axvline(1.2, color="grey", ls=":")
    ax.axhline(-0.5, color="grey", ls=":")
    ax.set_xlabel("step cost / BatchNorm step (ResNet-18, launch.bench_layer)")
    ax.set_ylabel("val accuracy minus k = 1 (points, one seed, short run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
