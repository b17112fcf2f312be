"""python -m launch.plot RUN_DIR [RUN_DIR ...] --out FILE.png: training loss, test accuracy
and images/s of one or several runs against steps and wall time; with --bands, the runs
grouped by configuration (seeds apart) as the mean accuracy and its 95 % confidence band
across seeds at each evaluation step."""
import argparse
import sys

from experiments.curves import NotARun, PlotUnavailable, load_run, plot_runs


def parser():
    p = argparse.ArgumentParser(
        prog="python -m launch.plot",
        description="Plot training runs written by launch.train: training loss, test "
                    "accuracy and images/s against steps and against wall time, one line "
                    "per run labelled model/norm/strategy/ranks.",
        epilog="Exit codes: 0 written (or matplotlib missing: a note, nothing written), 2 a "
               "directory that is not a run or an output that cannot be written.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories (the --out of launch.train)")
    p.add_argument("--out", default="plot.png",
                   help="image to write; the format follows the extension (png, pdf, svg)")
    p.add_argument("--bands", action="store_true",
                   help="group the runs by configuration (all options but the seed) and "
                        "draw each group's mean accuracy against steps with its 95 %% "
                        "t-interval across seeds (needs evaluation records: launch.train "
                        "--eval-interval or epoch ends; a study's runs are in OUT/runs/)")
    p.add_argument("--metric", default="test_acc", choices=("test_acc", "val_acc"),
                   help="accuracy drawn with --bands")
    return p


def plot_bands(args):
    from experiments.bands import group_runs, plot_bands as draw
    groups = group_runs(args.runs)
    path = draw([(f"{args.metric} across seeds", groups)], args.out, args.metric)
    return path, f"{len(args.runs)} runs in {len(groups)} configuration" + \
        ("s" if len(groups) > 1 else "")


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if args.bands:
            path, what = plot_bands(args)
        else:
            runs = [load_run(directory) for directory in args.runs]
            path = plot_runs(runs, args.out)
            what = f"{len(runs)} run{'s' if len(runs) > 1 else ''}"
    except NotARun as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except PlotUnavailable as exc:
        print(f"note: {exc}")
        return
    except (OSError, ValueError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: --out {args.out}: {text}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {path} ({what})")


if __name__ == "__main__":
    main()
