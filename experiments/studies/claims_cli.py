"""`python -m launch.study claims`: train the runs of the claims (resumably), then write the
verdicts. See docs/results/README.md (Claims study) for the plan and its size."""
import argparse
import json
import os
import sys

from experiments import provenance as prov
from experiments.studies import claims, plan
from experiments.studies.runner import DIVERGED, DONE, Runner


def parser():
    p = argparse.ArgumentParser(
        prog="python -m launch.study claims", description=__doc__,
        epilog="Every run is a `python -m launch.train` job in OUT/runs/<config>_s<seed>/. "
               "Run the same command again to continue an interrupted study: finished runs "
               "are never redone, runs stopped by the study's SIGTERM continue with --resume. "
               "In the background: nohup python -m launch.study claims --out runs/claims "
               "> runs/claims.log 2>&1 &")
    p.add_argument("--out", required=True, help="directory of the runs and the reports")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 of every configuration")
    p.add_argument("--only", default=None, metavar="L1,L2,...",
                   help=f"claims to run and report, of {','.join(plan.FAMILIES)} (default all)")
    p.add_argument("--jobs", type=int, default=2,
                   help="single-process runs at a time, one thread each; a multi-rank run "
                        "runs alone")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and an estimate of its time; train nothing")
    p.add_argument("--report-only", action="store_true",
                   help="write the reports of the runs finished so far; train nothing")
    p.add_argument("--publish", nargs="?", const="docs/results", default=None, metavar="DIR",
                   help="copy claims.md, claims.json and claims_*.{md,json,jsonl,png} to DIR "
                        "(default docs/results)")
    p.add_argument("--data-dir", default=None,
                   help="the data set's directory (launch.train --data-dir)")
    p.add_argument("--scale", default=None, metavar="FILE.json",
                   help="run sizes replacing the plan's (the layout of plan.SCALE, plus "
                        "\"families\": {\"S\": {\"lrs\": [1.0]}} to change a family's "
                        "parameters; for tests and trials); fixed for the output directory "
                        "once it has runs")
    return p


def load_scale(path):
    if path is None:
        return plan.SCALE
    try:
        with open(path) as f:
            scale = json.load(f)
        for key in ("val_size", "evals", "models"):
            scale[key]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"error: --scale {path}: {exc}")
    return scale


def extends(saved, mine):
    """Every size `saved` fixed is the same in `mine`; `mine` may add entries (a model a
    new family brings), which change no run already made."""
    if isinstance(saved, dict) and isinstance(mine, dict):
        return all(key in mine and extends(value, mine[key]) for key, value in saved.items())
    return saved == mine


def fix_scale(out, scale, data_dir, *, record=True):
    """The first invocation records the sizes in OUT/plan.json; a later one must agree on
    every size recorded (and may add new ones, recorded then unless `record` is false:
    --report-only trains nothing and leaves the file to the study that does)."""
    path = os.path.join(out, "plan.json")
    mine = json.loads(json.dumps({"scale": scale, "data_dir": data_dir}))
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if not extends(saved, mine):
            raise SystemExit(f"error: {out} holds runs of other sizes or data ({path}); "
                             "choose another --out or the same --scale and --data-dir")
        if saved == mine or not record:
            return
    elif not record:
        return
    os.makedirs(out, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(mine, f, indent=1)
    os.replace(path + ".tmp", path)


def dry_run(runner, fams, runs, seeds, jobs):
    estimate = lambda c: plan.estimate_s(c, runner.scale)  # noqa: E731
    states = {(c.name(), s): runner.state(c, s) for c, s in runs}
    todo = [(c, s) for c, s in runs if states[c.name(), s] not in (DONE, DIVERGED)]
    print(f"claims study in {runner.out}: {len(runs)} runs ({len(runs) - len(todo)} "
          f"finished), seeds 0..{len(seeds) - 1}, {jobs} job(s) at a time")
    for fam in fams:
        print(f"\n{fam.id}: {fam.title}")
        for c in fam.configs:
            subset, epochs, total, interval = plan.size_of(c, runner.scale)
            done = sum(states[c.name(), s] in (DONE, DIVERGED) for s in seeds)
            print(f"  {c.name():55s} {subset} images x {epochs} epochs = {total} steps, eval "
                  f"every {interval}; ~{estimate(c):.0f} s/run; {done}/{len(seeds)} done")
        for comp in fam.comparisons:
            print(f"  claim {comp.id}: {comp.text} [{comp.kind}]")
    single = sum(estimate(c) for c, _ in todo if c.ranks == 1)
    multi = sum(estimate(c) for c, _ in todo if c.ranks > 1)
    total = single / jobs + multi
    print(f"\nestimate: {total / 3600:.2f} h for {len(todo)} runs (single-process "
          f"{single:.0f} s over {jobs} jobs, multi-rank {multi:.0f} s one at a time), on a "
          "machine like the one plan.COST was measured on, without other load")
    return total


def main(argv):
    started = prov.start()  # before any run starts: the load of other work
    args = parser().parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        raise SystemExit("error: --seeds and --jobs must be >= 1")
    scale = load_scale(args.scale)
    try:
        fams = plan.families(args.only.split(",") if args.only else None,
                             scale.get("families"))
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"error: {exc}")
    seeds = list(range(args.seeds))
    runs = plan.runs_of(fams, seeds)
    say = lambda text: print(text, flush=True)  # noqa: E731
    runner = Runner(args.out, scale=scale, jobs=args.jobs, data_dir=args.data_dir, say=say)
    if args.dry_run:
        dry_run(runner, fams, runs, seeds, args.jobs)
        return 0
    fix_scale(args.out, scale, args.data_dir, record=not args.report_only)
    if not args.report_only:
        say(f"claims study: {len(runs)} runs in {args.out}/runs, {args.jobs} job(s) at a time")
        runner.run_all(runs, lambda c: plan.estimate_s(c, scale))
    rows = claims.collect(runner, fams, seeds)
    info = prov.provenance(["claims", *argv], started, threads=1, module="launch.study")
    every = claims.write_all(args.out, fams, rows, seeds, scale, info, runner.failed)
    for c in every:
        mean, ci = claims._interval_text(c)
        say(f"{c['id']}: {c['verdict']} (mean {mean}, 95 % interval {ci}, "
            f"{len(c['values'])} pairs)")
    say(f"wrote {os.path.join(args.out, 'claims.md')} and claims.json")
    if args.publish:
        copied = claims.publish(args.out, args.publish)
        say(f"published {len(copied)} files to {args.publish}")
    if runner.stop_signal is not None:
        say("stopped before the end: the reports cover the runs finished so far")
        return 1
    missing = len(runs) - len(rows)
    if missing and not args.report_only:
        say(f"{missing} run(s) failed: the reports leave them out (see claims.md)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
