"""python -m launch.study lr-check|convergence|stats-every|claims --out DIR: many training
runs -> tables + PNG.

lr-check:    invariance layer at lr 1.0 and 0.1 vs BatchNorm at 0.1 and 0.05 on digits
             (3 seeds each): test-accuracy curves, epochs to 97 %, final accuracy.
convergence: dasgd vs sync at equal epochs on digits, 2 and 4 ranks, 3 seeds.
stats-every: the invariance layer refreshing its statistics every k-th step, k = 1, 4, 10,
             50; small CNN and vit_tiny on digits, lr 0.1 and 1.0, 3 seeds (single process,
             one thread; continues an interrupted study from DIR/runs.jsonl).
claims:      the papers' claims on Fashion-MNIST, each decided by a verdict from runs paired
             by seed (python -m launch.study claims --help has its own options).
staleness, refresh-rules: why stale whitening fails and which refresh rule holds, on a
             Fashion-MNIST subset (python -m launch.study staleness --help).
"""
import argparse
import json
import os
import sys

from experiments.studies import digits
from toolkit import config

# launch.train's options, as launch.train parses and checks them (the studies' defaults)
RUN_OPTIONS = ("epochs", "norm", "lr")


def parser():
    p = argparse.ArgumentParser(prog="python -m launch.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=["lr-check", "convergence", "stats-every", "claims"])
    p.add_argument("--out", required=True, help="directory for the runs and the report")
    config.add_run_options(
        p, RUN_OPTIONS, defaults={"norm": "inv", "lr": 0.05},
        notes={"epochs": "of every run (stats-every: of the small_cnn runs)",
               "norm": "convergence only", "lr": "convergence only"})
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4],
                   help="worker counts (convergence)")
    p.add_argument("--vit-epochs", type=int,
                   help="epochs of the vit_tiny runs (stats-every; default: --epochs)")
    p.add_argument("--models", nargs="+", choices=["small_cnn", "vit_tiny"],
                   default=["small_cnn", "vit_tiny"],
                   help="models to run (stats-every; the report covers the runs of all "
                        "models found in DIR/runs.jsonl)")
    p.add_argument("--report-only", action="store_true",
                   help="stats-every: report the finished runs of DIR/runs.jsonl, train none")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["claims"]:
        from experiments.studies.claims_cli import main as claims_main
        return claims_main(argv[1:])
    if argv[:1] in (["staleness"], ["refresh-rules"]):
        from experiments.studies.staleness_cli import main as staleness_main
        return staleness_main(argv)
    p = parser()
    args = p.parse_args(argv)
    config.check_run_options(p, args, RUN_OPTIONS)
    os.makedirs(args.out, exist_ok=True)
    if args.study == "stats-every":
        return stats_every(args)
    if args.study == "lr-check":
        rows = digits.lr_check(args.out, seeds=args.seeds, epochs=args.epochs)
        table = digits.lr_check_table(rows)
        png = digits.plot_curves(rows, lambda r: f"{r['norm']} @ lr {r['lr']:g}",
                                 os.path.join(args.out, "lr_check.png"),
                                 "digits, small CNN: test accuracy per epoch")
    else:
        rows = digits.convergence(args.out, seeds=args.seeds, epochs=args.epochs,
                                  ranks=args.ranks, norm=args.norm, lr=args.lr)
        table = digits.convergence_table(rows)
        png = digits.plot_curves(rows, lambda r: f"{r['strategy']} np={r['ranks']}",
                                 os.path.join(args.out, "convergence.png"),
                                 "digits: dasgd vs sync, test accuracy per epoch")
    name = args.study.replace("-", "_")
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    if png:
        print(f"plot: {png}")


def stats_every(args):
    from experiments.studies import stats_every as study
    epochs = {"small_cnn": args.epochs, "vit_tiny": args.vit_epochs or args.epochs}
    rows = study.run_study(args.out, epochs=epochs, seeds=args.seeds, models=args.models,
                           train=not args.report_only)
    summary = study.summarise(rows)
    verdict = study.largest_k_that_holds(summary)
    epochs = {m: epochs[m] for m in args.models}
    text = study.table(summary, verdict, epochs)
    with open(os.path.join(args.out, "stats_every.json"), "w") as f:
        json.dump({"epochs": epochs, "summary": summary, "largest_k_that_holds": verdict,
                   "runs": rows}, f, indent=1)
    with open(os.path.join(args.out, "stats_every.md"), "w") as f:
        f.write(text + "\n")
    png = study.plot(summary, os.path.join(args.out, "stats_every.png"))
    print(text)
    if png:
        print(f"plot: {png}")


if __name__ == "__main__":
    sys.exit(main())
