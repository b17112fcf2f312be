"""Time to a test accuracy per strategy and node count: the claims study's steps to the
target (D1 runs at 2, 4, 8, 16 ranks) times the per-node-link benchmark's step times at the
same node counts (experiments/bench/time_to_accuracy.py says what is measured and what is
combined).

    python -m launch.time_to_accuracy --target 80 --out docs/results/time_to_accuracy

Writes OUT.json (the table, both inputs' paths and the benchmark's provenance, and this
command's), OUT.md (the command first) and OUT.png. Exit codes: 0 written; 2 bad input: a
missing or unreadable input, no finished D1 run yet, or nothing to combine (one line).
"""
import argparse
import json
import os
import sys

from experiments.bench.time_to_accuracy import (MissingData, combine, plot, read_runs,
                                                read_step_times, to_markdown)
from experiments.provenance import provenance, start
from toolkit.outputs import WriteError, write_atomic


def parser():
    p = argparse.ArgumentParser(prog="python -m launch.time_to_accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="docs/results/claims_D1.jsonl",
                   help="the claims study's D1 runs, one JSON object per line")
    p.add_argument("--steps", default="docs/results/nodes_device.json",
                   help="launch.bench_nodes' JSON (step times per node count)")
    p.add_argument("--target", type=float, default=80.0,
                   help="test accuracy to reach, in percent")
    p.add_argument("--out", default="docs/results/time_to_accuracy",
                   help="output prefix: OUT.json, OUT.md, OUT.png")
    return p


def main(argv=None):
    started = start()
    args = parser().parse_args(argv)
    try:
        if not 0 < args.target <= 100:
            raise MissingData(f"--target must be a percentage in (0, 100], got {args.target:g}")
        directory = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            raise MissingData(f"--out {args.out}: directory {directory} does not exist or is "
                              "not writable")
        runs = read_runs(args.runs)
        bench, rows = read_step_times(args.steps)
        table = combine(runs, rows, args.target)
    except MissingData as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python -m launch.time_to_accuracy " + " ".join(
        sys.argv[1:] if argv is None else argv)
    sources = {"runs": args.runs, "steps": args.steps}
    png = plot(table, args.target, args.out + ".png")
    report = {"target_percent": args.target, "rows": table, "sources": sources,
              "measured": ["steps to the target (claims study D1)",
                           "step time per strategy and node count (launch.bench_nodes)"],
              "combined": ["time = mean steps x median step"],
              "steps_provenance": bench.get("provenance"),
              "plot": os.path.basename(png) if png else None,
              "provenance": provenance(argv, started, module="launch.time_to_accuracy")}
    try:
        write_atomic(args.out + ".json", json.dumps(report, indent=1).encode(), "table JSON")
        write_atomic(args.out + ".md", to_markdown(table, args.target, command,
                                                   sources).encode(), "table")
    except WriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}.json {args.out}.md" + (f" {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
