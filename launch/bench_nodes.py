"""DaSGD across nodes: the strategies and PyTorch's peers on 2 to 16 emulated nodes of one
rank each, every node behind its own rate-limited link, with device-time compute; and the
alpha-beta model calibrated on 2 nodes held against the larger counts.

    python -m launch.bench_nodes --json docs/results/nodes_device.json

Needs root: creates emulated nodes (a network namespace, hostname, sshd and a tbf-limited
link each, see docs/multinode.md), and per node count runs one job (mpirun over ssh, TCP on
the nodes' links) in which the contenders take turns in interleaved rounds and which then
times allreduces by size; deletes the nodes. Writes the JSON (one row per node count:
medians, ratios to `none` with 95 % intervals, the model's errors, provenance), a markdown
table (same name, .md; the command first) and a plot (.png).
--model, --batch-size, --period (dasgd's H) and --delay are launch.train's options.

Exit codes: 0 written; 2 bad input or an unwritable output; 3 a sanity check failed (a
strategy faster than `none` beyond the noise, hidden above 1, a machine loaded by other
work before the start without --allow-loaded): nothing is written; 4 a job failed.
"""
import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time

from experiments.bench import nodes_report, sanity
from experiments.bench.comm import CONTENDERS
from experiments.bench.nodes_markdown import to_markdown
from experiments.bench.options import (add_step_bench_options, check_delay_max,
                                       check_step_bench_options, parse_periods,
                                       refuse_a_loaded_machine)
from experiments.emulation.jobs import (mpirun_nodes_argv, node_env, run_on_node,
                                        write_hostfile)
from experiments.emulation.network import NodeNetwork, check_rate, rate_bytes_per_s
from experiments.emulation.packages import ensure_programs
from experiments.emulation.ssh import NodeSsh
from experiments.provenance import provenance, start
from toolkit import config
from toolkit.mpi_policy import python_module
from toolkit.outputs import write_atomic

# launch.train's options, as launch.train parses and checks them (this benchmark's defaults)
RUN_OPTIONS = ("model", "batch_size", "period", "delay")
# The model is of a ring allreduce; Open MPI would pick other algorithms by size and rank
# count (recursive doubling, Rabenseifner), so the ring is forced.
RING = {"OMPI_MCA_coll_tuned_use_dynamic_rules": "1",
        "OMPI_MCA_coll_tuned_allreduce_algorithm": "4"}
# ResNet-20 at batch 32 on a V100/A100: docs/multinode.md says where 10 ms comes from.
DEVICE_STEP = "device:10"


def fail(message, code=2):
    """One line on stderr and the exit code (2 bad input or I/O, 4 a job failed)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


class Nodes:
    """Emulated nodes with sshd for the duration of a `with` block."""

    def __init__(self, count, rate):
        self.dir = tempfile.mkdtemp(prefix="bench_nodes_")
        self.net = NodeNetwork(self.dir, count, rate)
        self.ssh = NodeSsh(self.net)

    def __enter__(self):
        ensure_programs()
        try:
            self.net.create()
            self.ssh.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        self.ssh.stop()
        self.net.remove()
        self.ssh.release_privsep_dir()
        shutil.rmtree(self.dir, ignore_errors=True)  # keys, configuration, logs

    def mpirun(self, p, worker, env, timeout, tag):
        """`worker` on nodes node1..nodeP, one rank each, launched from node1."""
        hosts = write_hostfile(os.path.join(self.dir, f"hosts-{p}"),
                               {n: 1 for n in self.net.names[:p]})
        argv = mpirun_nodes_argv(hosts, p, worker, env_names=sorted(
            k for k in env if k.startswith("HOROVOD_")))
        proc = run_on_node(self.net, "node1", argv, env, timeout)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().replace("\n", " | ")[-1500:]
            fail(f"{tag} job on {p} nodes failed (exit {proc.returncode}): {detail}", 4)


def measure(nodes, args, p, out_dir):
    """One job on p nodes: the contenders' rounds, then allreduces by size; its result."""
    env = node_env(nodes.ssh, {**RING, "HOROVOD_CYCLE_TIME": f"{args.cycle_time_ms:g}"})
    out = os.path.join(out_dir, f"steps-{p}.json")
    began = time.time()
    nodes.mpirun(p, python_module(
        "experiments.bench.comm", "--strategies", ",".join(args.contenders), "--out", out,
        "--model", args.model, "--batch-size", args.batch_size, "--rounds", args.rounds,
        "--block-steps", args.block_steps, "--period", args.period, "--delay", args.delay,
        "--threads", 1, "--compute", args.compute, "--periods", args.periods_text,
        "--delay-max", args.delay_max, "--warmup-turn", "--probe-allreduce", args.repeats,
        "--probe-bytes", args.sizes), env, args.job_timeout, "benchmark")
    with open(out) as f:
        result = json.load(f)
    # The job's start-up (ranks, Horovod, gloo) is its wall time minus the worker's parts.
    result.setdefault("wall_s", {})["job_s"] = time.time() - began
    return result


def check_args(p, args):
    """Every input checked before anything starts (one line, exit 2)."""
    config.check_run_options(p, args, RUN_OPTIONS)
    check_step_bench_options(p, args)
    try:
        check_rate(args.rate)
        args.workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
        [int(s) for s in args.sizes.split(",") if s]
        args.periods_text = args.periods
        args.periods = parse_periods(args.periods, CONTENDERS)
        check_delay_max(args.delay_max)
    except ValueError as exc:
        fail(str(exc))
    if not args.workers or args.workers[0] != 2 or len(args.workers) < 2:
        fail(f"--workers must start at 2 (the calibration) and hold at least one larger "
             f"count, got {','.join(map(str, args.workers))}")
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(args.contenders) - set(CONTENDERS))
    if unknown or not {"none", "sync", "dasgd"} <= set(args.contenders):
        fail(f"--contenders must hold none, sync and dasgd and only {', '.join(CONTENDERS)}, "
             f"got {','.join(args.contenders)}")
    if args.rounds < 2 or args.block_steps < 2 or args.repeats < 1:
        fail("--rounds >= 2 (an interval needs two), --block-steps >= 2 (the first step of a "
             "turn is not timed), --repeats >= 1")
    directory = os.path.dirname(os.path.abspath(args.json)) or "."
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        fail(f"--json {args.json}: directory {directory} does not exist or is not writable")


def main(argv=None):
    started = start()
    p = parser()
    args = p.parse_args(argv)
    check_args(p, args)
    refuse_a_loaded_machine(args, started)
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(f"bench_nodes: stopped by signal {s}"))
    with tempfile.TemporaryDirectory(prefix="bench_nodes_out_") as out_dir:
        return _run(args, out_dir, argv, started)


def _run(args, out_dir, argv, started):
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    results = {}
    with Nodes(max(args.workers), args.rate) as nodes:
        say(f"{max(args.workers)} emulated nodes, link {args.rate} each, compute "
            f"{args.compute}")
        for count in args.workers:
            results[count] = result = measure(nodes, args, count, out_dir)
            # Fail fast: a broken measurement at few nodes is not worth the larger counts.
            nodes_report.check_sane(result)
            say(f"{count} nodes: " + "  ".join(f"{n} {v:.4f} s" for n, v in
                                               result["step_s"].items()) +
                f"  (dasgd d={result.get('dasgd_delay')})")
    report = build_report(args, results, argv, started)
    base = os.path.splitext(args.json)[0]
    report["plot"] = os.path.basename(base + ".png") \
        if nodes_report.plot(report, base + ".png") else None
    write_atomic(args.json, json.dumps(report, indent=1).encode(), "results JSON")
    text = to_markdown(report)
    write_atomic(base + ".md", text.encode(), "results table")
    say(text)
    say(f"wrote {args.json} {base}.md" + (f" {base}.png" if report["plot"] else ""))
    return report


def build_report(args, results, argv, started):
    cores = os.cpu_count()
    first = results[args.workers[0]]
    rows = [nodes_report.measured_row(p, results[p], cores) for p in args.workers]
    report = {"command": "python -m launch.bench_nodes " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "rate": args.rate, "link_bytes_per_s": rate_bytes_per_s(args.rate),
              "nodes_max": max(args.workers), "cores": cores, "model_name": args.model,
              "model_bytes": first["model_bytes"], "batch_per_rank": args.batch_size,
              "compute": args.compute, "contenders": args.contenders,
              "periods": first.get("periods", {}), "delay": args.delay,
              "delay_max": args.delay_max, "rounds": args.rounds,
              "block_steps": args.block_steps, "cycle_time_ms": args.cycle_time_ms,
              "interval": "95 % percentile bootstrap of the median of per-round ratios",
              "rows": rows}
    report["model"] = nodes_report.model_checks(rows, first["model_bytes"], args.period)
    for row in rows:
        row["targets"] = nodes_report.targets(row)
    report["provenance"] = provenance(argv, started, threads=1, module="launch.bench_nodes")
    return report


def parser():
    p = argparse.ArgumentParser(prog="python -m launch.bench_nodes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="where to write the results (and .md, .png)")
    p.add_argument("--rate", default="100mbit", help="each node's link, tc syntax")
    p.add_argument("--workers", default="2,4,8,16", help="node counts, one rank each; from 2")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help="what takes turns: Horovod's strategies and PyTorch's peers (ddp, "
                        "postlocal); none, sync and dasgd at least")
    p.add_argument("--sizes", default="65536,262144,1048576,4194304",
                   help="allreduce message sizes in bytes (the model's size is added)")
    p.add_argument("--repeats", type=int, default=5, help="timed allreduces per size")
    config.add_run_options(p, RUN_OPTIONS, defaults={"model": "resnet20", "delay": "auto"},
                           notes={"period": "dasgd's H here (--periods sets the others')"})
    p.add_argument("--periods", default="local=4,postlocal=4",
                   help="NAME=H,...: the averaging period of local and postlocal")
    p.add_argument("--delay-max", type=int, default=32,
                   help="the largest d --delay auto may choose (training's cap is 8; at 100 "
                        "Mbit a ResNet-20 average lasts many device steps)")
    add_step_bench_options(p)
    p.set_defaults(compute=DEVICE_STEP)
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds of turns")
    p.add_argument("--block-steps", type=int, default=8,
                   help="steps per turn (the first untimed; dasgd adds its settling steps)")
    p.add_argument("--cycle-time-ms", type=float, default=5.0, help="HOROVOD_CYCLE_TIME")
    p.add_argument("--job-timeout", type=float, default=3600, help="seconds per job")
    return p


if __name__ == "__main__":
    try:
        main()
    except sanity.BenchmarkInsane as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(sanity.BENCH_INSANE)
