"""Scaling across per-node links: allreduce and the strategies' steps on 2, 3, 4 emulated
nodes of one rank each, and `launch.scaling project` (calibrated on 2 nodes) checked
against them.

    python -m launch.bench_nodes --json docs/results/multinode_scaling.json [--rate 100mbit]

Needs root: creates emulated nodes (a network namespace, hostname, sshd and a tbf-limited
link each, see docs/multinode.md), runs per worker count one job timing allreduces of
several sizes and one job in which none, sync and dasgd take turns (experiments.bench.comm),
with mpirun over ssh and TCP on the nodes' links, then deletes the nodes. Writes the JSON
and a markdown table next to it (same name, .md): measurements, alpha and beta fitted to
all points, and the projection's error at each worker count.
--model, --batch-size, --period and --delay (an integer or auto) are launch.train's options
(same types, choices and checks), with this benchmark's defaults.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from experiments.bench.nodes import (compare, fit_all, fit_with_call_overhead, to_markdown,
                                 within)
from experiments.emulation.jobs import (mpirun_nodes_argv, node_env, run_on_node,
                                      write_hostfile)
from experiments.emulation.network import NodeNetwork, check_rate, rate_bytes_per_s
from experiments.emulation.packages import ensure_programs
from experiments.emulation.ssh import NodeSsh
from experiments.provenance import provenance, start
from toolkit import config
from experiments.bench import sanity
from experiments.bench.comm import (add_step_bench_options, check_step_bench_options,
                                    refuse_a_loaded_machine)
from toolkit.mpi_policy import python_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATEGIES = ("none", "sync", "dasgd")
# launch.train's options, as launch.train parses and checks them (this benchmark's defaults)
RUN_OPTIONS = ("model", "batch_size", "period", "delay")
# The projection models a ring allreduce; Open MPI would pick other algorithms by size and
# rank count (recursive doubling, Rabenseifner), so the ring is forced for the check.
RING = {"OMPI_MCA_coll_tuned_use_dynamic_rules": "1",
        "OMPI_MCA_coll_tuned_allreduce_algorithm": "4"}


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


def measure(nodes, args, p, sizes, out_dir):
    env = node_env(nodes.ssh, {**RING, "HOROVOD_CYCLE_TIME": f"{args.cycle_time_ms:g}"})
    ar_json = os.path.join(out_dir, f"allreduce-{p}.json")
    nodes.mpirun(p, python_module("experiments.bench.nodes", "--sizes", ",".join(map(str, sizes)),
                                  "--repeats", args.repeats, "--out", ar_json),
                 env, args.job_timeout, "allreduce")
    steps_json = os.path.join(out_dir, f"steps-{p}.json")
    nodes.mpirun(p, python_module("experiments.bench.comm", "--strategies", ",".join(STRATEGIES),
                                  "--out", steps_json, "--model", args.model,
                                  "--batch-size", args.batch_size, "--rounds", args.rounds,
                                  "--block-steps", args.block_steps, "--period", args.period,
                                  "--delay", args.delay, "--threads", 1,
                                  "--compute", args.compute),
                 env, args.job_timeout, "strategies")
    with open(ar_json) as f:
        allreduce = json.load(f)
    with open(steps_json) as f:
        steps = json.load(f)
    return allreduce, steps


def project(bench_json, workers, delay, prefix):
    """launch.scaling project on the 2-node measurement at the measured dasgd delay (not
    the delay it would choose per worker count; with --delay auto, as auto chooses it at each
    worker count, as the measured jobs did); its JSON (model and rows)."""
    cmd = python_module("launch.scaling", "project", "--bench", bench_json, "--workers",
                        ",".join(map(str, workers)), "--delay", delay, "--out", prefix)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"launch.scaling project failed: {proc.stderr.strip()}")
    with open(prefix + ".json") as f:
        return json.load(f)


def main(argv=None):
    started = start()
    p = parser()
    args = p.parse_args(argv)
    config.check_run_options(p, args, RUN_OPTIONS)
    check_step_bench_options(p, args)
    try:
        check_rate(args.rate)
        workers = sorted({int(w) for w in args.workers.split(",")})
        extra = [int(s) for s in args.sizes.split(",") if s]
    except ValueError as exc:
        fail(str(exc))
    if workers[0] != 2 or len(workers) < 2:
        fail(f"--workers must start at 2 (the calibration) and hold at least one larger "
             f"count, got {args.workers}")
    refuse_a_loaded_machine(args, started)
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(f"bench_nodes: stopped by signal {s}"))
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    command = "python -m launch.bench_nodes " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="bench_nodes_out_") as out_dir:
        return _run(args, workers, extra, out_dir, say, command, argv, started)


def _run(args, workers, extra, out_dir, say, command, argv=None, started=None):
    measured, model_bytes = {}, average_bytes(args.model)
    sizes = sorted(set(extra) | {model_bytes})
    with Nodes(max(workers), args.rate) as nodes:
        say(f"{max(workers)} emulated nodes, link {args.rate} each")
        for p in workers:
            allreduce, steps = measure(nodes, args, p, sizes, out_dir)
            at_model = next(pt["seconds"] for pt in allreduce["allreduce"]
                            if pt["bytes"] == model_bytes)
            sanity.check(steps["round_step_s"])
            measured[p] = {"hosts": allreduce["hosts"], "allreduce": allreduce["allreduce"],
                           "allreduce_s": at_model, "step_s": steps["step_s"],
                           "dasgd_delay": steps.get("dasgd_delay"),
                           "round_step_s": steps["round_step_s"]}
            say(f"{p} nodes: " + "  ".join(f"{s} {steps['step_s'][s]:.3f} s" for s in
                                           STRATEGIES) + f"  allreduce {at_model:.3f} s")
    # The 2-node measurement in the benchmark's JSON format, as a user would calibrate.
    two = measured[2]
    bench2 = os.path.join(out_dir, "bench_2_nodes.json")
    with open(bench2, "w") as f:
        json.dump({"model": args.model, "ranks": 2, "batch_per_rank": args.batch_size,
                   "period": args.period, "delay": args.delay,
                   "dasgd_delay": two["dasgd_delay"], "step_s": two["step_s"],
                   "model_bytes": model_bytes, "allreduce": two["allreduce"]}, f)
    projection = project(bench2, workers, args.delay, os.path.join(out_dir, "projection"))
    checks = compare(projection["rows"], projection["model"]["compute_s"], measured,
                     lambda p: measured[p]["step_s"]["none"])
    points = [(pt["workers"], pt["bytes"], pt["seconds"])
              for m in measured.values() for pt in m["allreduce"]]
    report = {"command": command,
              "rate": args.rate, "link_bytes_per_s": rate_bytes_per_s(args.rate),
              "nodes_max": max(workers), "cores": os.cpu_count(), "model": args.model,
              "model_bytes": model_bytes, "batch_per_rank": args.batch_size,
              "period": args.period, "delay": args.delay,
              "cycle_time_ms": args.cycle_time_ms, "sizes": sizes,
              "measured": {str(p): m for p, m in measured.items()},
              "projection_model": projection["model"],
              "projection_assumptions": projection["assumptions"],
              "fit_all": fit_all(points),
              "fit_with_call_overhead": fit_with_call_overhead(points),
              "checks": checks, "target": args.target}
    report["within_target"] = within(checks, args.target)
    report["provenance"] = provenance(argv, started or start(), threads=1,
                                      module="launch.bench_nodes")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    md = os.path.splitext(args.json)[0] + ".md"
    text = to_markdown(report)
    with open(md, "w") as f:
        f.write(text)
    say(text)
    say(f"wrote {args.json} {md}")
    return report


def average_bytes(model_name):
    """Bytes of one model average as experiments.bench.comm counts them: float32 parameters
    and floating buffers."""
    from models import build_model
    model = build_model(model_name, num_classes=10, in_channels=3, image_size=32, norm="bn")
    return 4 * (sum(p.numel() for p in model.parameters())
                + sum(b.numel() for b in model.buffers() if b.is_floating_point()))


def parser():
    p = argparse.ArgumentParser(prog="python -m launch.bench_nodes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="where to write the results (and .md)")
    p.add_argument("--rate", default="100mbit", help="each node's link, tc syntax")
    p.add_argument("--workers", default="2,3,4", help="node counts, one rank each; from 2")
    p.add_argument("--sizes", default="65536,262144,1048576,4194304",
                   help="allreduce message sizes in bytes (the model's size is added)")
    p.add_argument("--repeats", type=int, default=5, help="timed allreduces per size")
    config.add_run_options(p, RUN_OPTIONS, defaults={"model": "resnet20"})
    add_step_bench_options(p)
    p.add_argument("--rounds", type=int, default=4, help="turns of every strategy")
    p.add_argument("--block-steps", type=int, default=4, help="steps per turn")
    p.add_argument("--cycle-time-ms", type=float, default=5.0, help="HOROVOD_CYCLE_TIME")
    p.add_argument("--target", type=float, default=0.10, help="allowed relative error")
    p.add_argument("--job-timeout", type=float, default=600, help="seconds per job")
    return p


if __name__ == "__main__":
    try:
        main()
    except sanity.BenchmarkInsane as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(sanity.BENCH_INSANE)
