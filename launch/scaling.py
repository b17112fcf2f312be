"""python -m launch.scaling: scaling studies on a SLURM cluster.

  sweep    submit one job per (weak|strong, strategy, worker count) with slurm/train.sbatch
  wait     wait for the jobs of a sweep directory to finish
  report   table (markdown + CSV) and plot of the finished runs of a sweep directory
  project  alpha-beta projection of sync vs dasgd to 8 ... 4096 workers

Exit codes: 0 ok, 1 a job failed or timed out, 2 bad input.
"""
import argparse
import json
import os
import sys

from toolkit import config


def _int_list(text):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}")


def _str_list(text):
    return [x.strip() for x in text.split(",") if x.strip()]


# launch.train's options of `project`, as launch.train parses and checks them
PROJECT_RUN_OPTIONS = ("period", "delay")


def parser():
    p = argparse.ArgumentParser(prog="python -m launch.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="submit a scaling sweep (one sbatch job per point)",
                       description="Submit one job per worker count, mode and strategy. "
                       "Arguments after `--` go to launch.train (e.g. -- --model resnet20 "
                       "--dataset cifar10 --epochs 1); --strategy/--batch-size/--out are "
                       "set per job.")
    s.add_argument("--workers", type=_int_list, required=True, help="e.g. 1,2,4,8")
    s.add_argument("--modes", type=_str_list, default=["weak", "strong"])
    s.add_argument("--strategies", type=_str_list, default=["sync", "dasgd"])
    s.add_argument("--batch-size", type=int, default=32,
                   help="batch per rank (weak scaling; strong: per rank of the largest job)")
    s.add_argument("--global-batch", type=int, default=None,
                   help="global batch of strong scaling (default: batch-size x max workers)")
    s.add_argument("--out", default="runs/scaling", help="sweep directory")
    s.add_argument("--launcher", default="srun", help="srun (--mpi=pmix) or mpirun")
    s.add_argument("--ntasks-per-node", type=int, default=None,
                   help="ranks per node (cores or GPUs of a node); default: let SLURM pack")
    s.add_argument("--cpus-per-task", type=int, default=1, help="cores (threads) per rank")
    s.add_argument("--gpus-per-task", type=int, default=0)
    s.add_argument("--time", default=None, help="sbatch --time, e.g. 00:30:00")
    s.add_argument("--partition", default=None)
    s.add_argument("--account", default=None)
    s.add_argument("--sbatch-arg", action="append", default=[], dest="sbatch_args",
                   help="extra sbatch option, repeatable, e.g. --sbatch-arg=--qos=debug")
    s.add_argument("--template", metavar="FILE", default=None,
                   help="the sbatch script of every job (default: slurm/train.sbatch of the "
                        "source checkout)")
    s.add_argument("--dry-run", action="store_true", help="print the sbatch commands only")
    s.add_argument("--wait", action="store_true", help="wait until every job has finished")
    s.add_argument("--timeout", type=float, default=24 * 3600, help="seconds for --wait")
    s.add_argument("train_args", nargs=argparse.REMAINDER)

    w = sub.add_parser("wait", help="wait for the submitted jobs of a sweep directory")
    w.add_argument("dir")
    w.add_argument("--timeout", type=float, default=24 * 3600)

    r = sub.add_parser("report", help="scaling table and plot from finished runs")
    r.add_argument("dir", help="sweep directory (searched recursively for summary.json)")
    r.add_argument("--prefix", default=None,
                   help="output path prefix (default DIR/scaling_report -> .md .csv .png)")

    j = sub.add_parser("project", help="alpha-beta projection of sync and dasgd",
                       description="Calibrate an alpha-beta ring-allreduce model from the "
                       "communication benchmark (python -m launch.bench_comm --json FILE) or "
                       "from flags, and project sync and dasgd to many workers.")
    j.add_argument("--bench", default=None, help="bench_comm JSON file")
    j.add_argument("--transport", default=None, help="section of the JSON (e.g. mpi, gloo)")
    j.add_argument("--compute-s", type=float, default=None, help="step without communication")
    j.add_argument("--allreduce-s", type=float, default=None, help="measured allreduce time")
    j.add_argument("--bytes", type=float, default=None, help="allreduce message size")
    j.add_argument("--measured-workers", type=int, default=None,
                   help="workers of the measurement (default: from the JSON, else 2)")
    j.add_argument("--alpha", type=float, default=None,
                   help="latency per hop in seconds (default: fitted if the JSON has "
                        "several sizes, else assumed 5e-6)")
    j.add_argument("--overlap", type=float, default=None,
                   help="share of a step that overlaps sync's allreduce (default: calibrated)")
    config.add_run_options(
        j, PROJECT_RUN_OPTIONS, defaults={"period": None, "delay": "auto"},
        notes={"period": "of the projected dasgd; none given: the benchmark's, else 1",
               "delay": "of the projected dasgd; auto: per worker count, as --delay auto "
                        "would choose it"})
    j.add_argument("--batch-per-rank", type=int, default=None, help="for images/s")
    j.add_argument("--workers", default="8..4096", help="8,16,... or a range 8..4096")
    j.add_argument("--out", default="runs/projection",
                   help="output prefix -> PREFIX.md, PREFIX.json, PREFIX.png")
    return p


def cmd_sweep(args):
    from toolkit.scaling.sweep import SweepConfig, format_command, plan, submit_all

    train = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    cfg = SweepConfig(workers=args.workers, modes=args.modes, strategies=args.strategies,
                      batch_size=args.batch_size, global_batch=args.global_batch, out=args.out,
                      launcher=args.launcher, ntasks_per_node=args.ntasks_per_node,
                      cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
                      time=args.time, partition=args.partition, account=args.account,
                      sbatch_args=args.sbatch_args, template=args.template, train_args=train)
    jobs = plan(cfg)
    if args.dry_run:
        for job in jobs:
            print(format_command(job.argv))
        return 0
    submitted = submit_all(jobs)
    print(f"{len(submitted)} job(s) submitted; report: python -m launch.scaling report {cfg.out}")
    if args.wait and submitted:
        return _wait([jid for _, jid in submitted], args.timeout)
    return 0


def _wait(job_ids, timeout):
    from toolkit.scaling.slurm_jobs import wait_for_jobs

    final = wait_for_jobs(job_ids, timeout=timeout,
                          on_change=lambda j, s: print(f"job {j}: {s}", flush=True))
    failed = {j: s for j, s in final.items() if s[0] != "COMPLETED"}
    for j, (state, code) in failed.items():
        print(f"job {j} ended {state} (exit {code})", file=sys.stderr)
    return 1 if failed else 0


def cmd_wait(args):
    from toolkit.scaling.report import find_runs
    from toolkit.scaling.sweep import MARKER

    done, unfinished = find_runs(args.dir)
    ids = []
    for d in done + unfinished:
        marker = os.path.join(d, MARKER)
        if os.path.exists(marker):
            with open(marker) as f:
                ids.append(json.load(f)["job_id"])
    if not ids:
        raise ValueError(f"no submitted jobs under {args.dir} (no {MARKER} files)")
    return _wait(ids, args.timeout)


def cmd_report(args):
    from toolkit.scaling.report import make_report

    text, paths = make_report(args.dir, args.prefix)
    print(text)
    print("wrote " + " ".join(paths.values()))
    return 0


def cmd_project(args):
    from toolkit.scaling.calibration import measured_inputs
    from toolkit.scaling import projection as pj

    measured = measured_inputs(args.bench, args.transport, compute_s=args.compute_s,
                               allreduce_s=args.allreduce_s, nbytes=args.bytes,
                               workers=args.measured_workers,
                               batch_per_rank=args.batch_per_rank)
    model, notes = pj.calibrate(measured, alpha=args.alpha, overlap=args.overlap,
                                period=args.period, delay=args.delay)
    rows = pj.project(model, pj.parse_workers(args.workers), measured.batch_per_rank)
    text = pj.to_markdown(rows, [f"measured inputs from {measured.source}"] + notes,
                          pj.check_rows(model, measured))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write("# Projected scaling: sync vs dasgd\n\n" + text)
    with open(args.out + ".json", "w") as f:
        json.dump({"model": vars(model), "assumptions": notes, "rows": rows}, f, indent=2)
    png = pj.plot(rows, args.out + ".png")
    print(text)
    if png is None:
        print("(no plot: matplotlib is not installed; pip install matplotlib)")
    print(f"wrote {args.out}.md {args.out}.json" + (f" {png}" if png else ""))
    return 0


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.command == "project":
        config.check_run_options(p, args, PROJECT_RUN_OPTIONS)
    handler = {"sweep": cmd_sweep, "wait": cmd_wait, "report": cmd_report,
               "project": cmd_project}[args.command]
    try:
        return handler(args)
    except (ValueError, OSError, RuntimeError, TimeoutError) as exc:
        print(f"launch.scaling {args.command}: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, TimeoutError) else 2


if __name__ == "__main__":
    sys.exit(main())
