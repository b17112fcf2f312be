"""Per-rank part of the communication-hiding benchmark, and the arithmetic on its results.

Every rank trains one model copy per strategy on synthetic CIFAR-shaped batches (generated
here from a seeded torch generator, so no dataset is needed); the strategies take turns in
blocks of steps within one job, so all of them see the same machine load, and rank 0
writes each strategy's median step time (slowest rank) as JSON. launch/bench_comm.py starts these jobs
inside a rate-limited network namespace and compares the strategies.

    python -m experiments.bench.comm --strategies none,sync,local,dasgd --out result.json

--model, --image-size, --batch-size, --period, --delay (an integer or auto), --threads and
--seed are launch.train's options (same types and checks).
"""
import argparse
import json
import os
import re
import resource
import socket
import statistics
import time

import torch

from experiments.bench.contenders import Contender, finish_gpu_work, run_rounds
from experiments.bench.options import (add_compute_option, check_compute_option,
                                       check_delay_max, parse_periods)
from experiments.bench.peers import PEER_NAMES
from toolkit import config
from toolkit.strategies import STRATEGY_NAMES

# What the benchmark can time: the strategies of the registry, then PyTorch's own peers.
CONTENDERS = STRATEGY_NAMES + PEER_NAMES
RATE_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$")
RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
# Message sizes (fractions of the model) timed for the latency/bandwidth fit.
SIZE_FRACTIONS = (1 / 64, 1 / 16, 1 / 4, 1.0)


def rate_bits_per_s(rate):
    """'800mbit' -> 8e8 (tc's rate syntax, decimal units)."""
    match = RATE_PATTERN.match(str(rate).strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"--rate must look like 800mbit, 1gbit or 500kbit (tc syntax), "
                         f"got {rate!r}")
    return float(match.group(1)) * RATE_UNITS[match.group(2)]


def format_rate(bits_per_s):
    return f"{max(1, round(bits_per_s / 1e6))}mbit"


def ratios(step_s):
    """Ratios to `none`, dasgd against the fastest peer, and the hidden fraction
    (sync - dasgd) / (sync - none)."""
    none, sync, dasgd = step_s["none"], step_s["sync"], step_s["dasgd"]
    out = {"dasgd_over_none": dasgd / none, "sync_over_none": sync / none}
    for name in CONTENDERS:
        if name not in ("none", "sync", "dasgd") and name in step_s:
            out[f"{name}_over_none"] = step_s[name] / none
    peers = [step_s[n] for n in CONTENDERS if n not in ("none", "dasgd") and n in step_s]
    # DaSGD's step against the fastest of the other data-parallel methods (<= 1: no slower)
    out["dasgd_over_fastest_peer"] = dasgd / min(peers)
    exposed = sync - none
    # With no communication cost to hide the fraction is undefined, not 1.
    out["hidden_fraction"] = (sync - dasgd) / exposed if exposed > 0 else None
    return out


def round_ratio_spread(round_step_s, over="none", of=None):
    """Per-round ratios strategy/none (turns of one round run back to back, so a change in
    the machine's load between rounds cancels): median and quartiles per strategy, which show
    how far the ratio of the medians can be trusted on a shared machine."""
    base = round_step_s.get(over)
    spread = {}
    for name in of or [n for n in CONTENDERS if n != over]:
        if base is None or name not in round_step_s:
            continue
        per_round = sorted(a / b for a, b in zip(round_step_s[name], base))
        q = statistics.quantiles(per_round, n=4) if len(per_round) >= 2 else per_round * 3
        spread[f"{name}_over_{over}"] = {"median": statistics.median(per_round),
                                         "q1": q[0], "q3": q[2], "rounds": len(per_round)}
    return spread


def timeline_rounds(path, tensor="dasgd.avg"):
    """From a Horovod timeline: how long each allreduce of `tensor` ran and how far apart
    the rounds started. An allreduce lasting most of the interval between two launches,
    while the step time stays at `none`'s, is the communication running under compute."""
    with open(path) as f:
        text = f.read().rstrip().rstrip(",")
    events = json.loads(text if text.endswith("]") else text + "]")
    pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
            and tensor in str(e.get("args", {}).get("name", ""))}
    starts, durations, open_spans = [], [], {}
    for e in events:
        if e.get("pid") not in pids or e.get("ph") not in ("B", "E"):
            continue
        stack = open_spans.setdefault(e["pid"], [])
        if e["ph"] == "B":
            stack.append((e.get("name"), e["ts"]))
            if e.get("name") == "NEGOTIATE_ALLREDUCE":
                starts.append(e["ts"])
        elif stack:
            name, begin = stack.pop()
            if name == "ALLREDUCE":
                durations.append((e["ts"] - begin) / 1e6)
    gaps = [(b - a) / 1e6 for a, b in zip(starts, starts[1:])]
    return {"rounds": len(durations),
            "allreduce_s": statistics.median(durations) if durations else None,
            "launch_interval_s": statistics.median(gaps) if gaps else None}


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def thread_cpu_s():
    """{thread id: CPU seconds (user + system)} for this process's threads, from /proc
    (clock-tick resolution, so only sums over many steps mean something; {} off Linux)."""
    seconds = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return seconds
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds[tid] = (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime
    return seconds


class CpuSplit:
    """CPU used by the compute threads vs the communication threads (those hvd.init()
    started) over measured intervals. On a node whose cores the ranks' compute already
    fills, the communication threads' CPU is what an overlapped average still costs.
    A thread that ends inside an interval takes its CPU with it (/proc forgets it); the
    threads measured here live as long as the job."""

    def __init__(self, comm_threads):
        self.comm_threads = set(comm_threads)
        self.compute_s = self.comm_s = 0.0
        self._start = None

    def start(self):
        self._start = thread_cpu_s()

    def stop(self):
        end = thread_cpu_s()
        for tid, seconds in end.items():
            used = seconds - self._start.get(tid, 0.0)
            if tid in self.comm_threads:
                self.comm_s += used
            else:
                self.compute_s += used


def check_comm_cpu(cpu):
    """The CPUs this process may use, if `cpu` can be given to communication with at least
    one left for compute; ValueError naming the option otherwise."""
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed or len(allowed) < 2:
        raise ValueError(f"--comm-cpu {cpu}: needs a CPU this process may use, other than "
                         f"the compute ones (allowed: {sorted(allowed)})")
    return allowed


def give_communication_a_core(cpu, comm_threads):
    """Pin this process's compute (the calling thread and the threads it starts later) to
    every allowed CPU but `cpu`, and the communication threads to `cpu`: a node with a core
    to spare for communication, emulated on this one."""
    allowed = check_comm_cpu(cpu)
    os.sched_setaffinity(0, allowed - {cpu})  # 0 = the calling thread on Linux
    for tid in comm_threads:
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:  # the thread ended meanwhile
            pass


def synthetic_batches(count, batch_size, channels, image_size, num_classes, seed):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, channels, image_size, image_size, generator=gen),
             torch.randint(0, num_classes, (batch_size,), generator=gen))
            for _ in range(count)]


def probe_allreduce(hvd, numel, repeats, device="cpu"):
    """Seconds per blocking average of `numel` floats (the size DaSGD sends per round)."""
    buf = torch.zeros(numel, device=device)
    hvd.allreduce_(buf, op=hvd.Average, name="bench.probe")  # connection set-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        hvd.allreduce_(buf, op=hvd.Average, name="bench.probe")
        finish_gpu_work(buf)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe_sizes(hvd, numel, fractions, repeats, device="cpu"):
    """[{workers, bytes, seconds}] of blocking averages of `fractions` of the model: the
    points from which `launch.scaling project` fits latency and bandwidth."""
    points = []
    for fraction in fractions:
        n = max(1, int(numel * fraction))
        points.append({"workers": hvd.size(), "bytes": 4 * n,
                       "seconds": probe_allreduce(hvd, n, repeats, device)})
    return points


def run_worker(args):
    """All strategies in one job, taking turns in blocks of steps (the order rotates every
    round), so that they all see the same load on a shared machine."""
    from toolkit.job.startup import communication_threads, init_horovod
    from experiments.bench.peers import init_torch_distributed
    from toolkit.strategies import make_strategy
    from toolkit.train import default_threads
    hvd = init_horovod()
    from experiments.bench.device import benchmark_device
    benchmark_device(args.device, local_rank=hvd.local_rank())  # cuda: this rank's GPU
    if args.comm_cpu is not None:
        give_communication_a_core(args.comm_cpu, communication_threads())
    torch.set_num_threads(args.threads or default_threads(hvd.local_size()))
    from models import build_model
    names = [n for n in args.strategies.split(",") if n]
    comm_threads = communication_threads()
    if set(names) & set(PEER_NAMES):
        comm_threads |= init_torch_distributed(hvd)
    contenders = [Contender(n, args, make_strategy, build_model,
                            args.periods.get(n, args.period), args.delay_max) for n in names]
    for c in contenders:
        c.cpu = CpuSplit(comm_threads)
    batches = synthetic_batches(4, args.batch_size, 3, args.image_size, 10,
                                seed=args.seed * 1000 + hvd.rank())
    batches = [(x.to(args.device), y.to(args.device)) for x, y in batches]
    wall = run_rounds(contenders, batches, torch.nn.CrossEntropyLoss(), args.rounds,
                      args.block_steps, warmup_turn=args.warmup_turn)
    probe_began = time.perf_counter()
    # A step's time: the median of the turns' values (experiments/bench/contenders.py).
    mine = torch.tensor([[statistics.median(c.block_medians), statistics.mean(c.waits),
                          min(c.times),
                          c.cpu.compute_s / len(c.times), c.cpu.comm_s / len(c.times)]
                         for c in contenders], dtype=torch.float64)
    everyone = hvd.allgather(mine.unsqueeze(0), name="bench.result")  # ranks x strategies x 5
    blocks = torch.tensor([c.block_medians for c in contenders], dtype=torch.float64)
    block_all = hvd.allgather(blocks.unsqueeze(0), name="bench.blocks")  # ranks x strat x rounds
    model = contenders[0].model
    numel = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.buffers() if b.is_floating_point())
    probe = probe_allreduce(hvd, numel, args.probe_allreduce, args.device) \
        if args.probe_allreduce else None
    sizes = probe_sizes(hvd, numel, SIZE_FRACTIONS, args.probe_allreduce, args.device) \
        if args.probe_allreduce and args.probe_sizes else None
    if args.probe_bytes:
        # Given sizes and the model's, slowest rank's median: the alpha-beta fit's points.
        from experiments.bench.nodes import time_allreduces
        wanted = sorted({int(b) for b in args.probe_bytes.split(",") if b} | {4 * numel})
        sizes = [{"workers": hvd.size(), "bytes": n, "seconds": t} for n, t in
                 time_allreduces(hvd, torch, wanted, max(1, args.probe_allreduce))]
    hosts = hvd.allgather_object(socket.gethostname())
    # Peak memory of the largest rank (ru_maxrss is KiB on Linux): what a node count costs.
    max_rss_mib = max(hvd.allgather_object(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                           / 1024))
    wall["probe_s"] = time.perf_counter() - probe_began
    if hvd.rank() == 0:
        result = {"model": args.model, "ranks": hvd.size(), "batch_per_rank": args.batch_size,
                  "compute": args.compute,
                  "rounds": args.rounds, "block_steps": args.block_steps,
                  "timed_steps_per_strategy": len(contenders[0].times),
                  "period": args.period, "delay": args.delay, "hosts": hosts,
                  "max_rss_mib": max_rss_mib,
                  "periods": {c.name: c.period for c in contenders},
                  "delay_max": args.delay_max, "warmup_turn": args.warmup_turn,
                  # the d dasgd ran with (--delay auto: the one it chose)
                  "dasgd_delay": next((c.strategy.delay for c in contenders
                                       if c.name == "dasgd"), None),
                  # The job moves at the pace of its slowest rank.
                  "step_s": {c.name: float(everyone[:, i, 0].max())
                             for i, c in enumerate(contenders)},
                  "step_s_per_rank": {c.name: everyone[:, i, 0].tolist()
                                      for i, c in enumerate(contenders)},
                  # (None for PyTorch's peers: their waiting happens inside torch)
                  "comm_wait_s_per_step": {c.name: None if c.name in PEER_NAMES
                                           else float(everyone[:, i, 1].max())
                                           for i, c in enumerate(contenders)},
                  # The fastest step is the least disturbed by other load (calibration).
                  "step_s_min": {c.name: float(everyone[:, i, 2].max())
                                 for i, c in enumerate(contenders)},
                  # CPU seconds per timed step, mean over ranks: compute threads vs the
                  # threads hvd.init() started (the price of communicating on busy cores)
                  "cpu_s_per_step": {c.name: {"compute": float(everyone[:, i, 3].mean()),
                                              "comm": float(everyone[:, i, 4].mean())}
                                     for i, c in enumerate(contenders)},
                  # per round, slowest rank: for ratios of turns that ran back to back
                  "round_step_s": {c.name: block_all[:, i, :].max(0).values.tolist()
                                   for i, c in enumerate(contenders)},
                  "model_bytes": 4 * numel, "allreduce_s": probe,
                  "allreduce_sizes": sizes,
                  # rank 0's seconds in each part of the job (what more rounds would cost)
                  "wall_s": wall}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if set(names) & set(PEER_NAMES):
        import torch.distributed as dist
        dist.destroy_process_group()


# launch.train's options, as launch.train parses and checks them (this benchmark's defaults)
WORKER_RUN_OPTIONS = ("model", "image_size", "batch_size", "period", "delay", "threads", "seed")


def worker_parser():
    p = argparse.ArgumentParser(prog="python -m experiments.bench.comm",
                                description="one rank of the communication-hiding benchmark")
    p.add_argument("--strategies", default="none,sync,local,dasgd",
                   help="comma-separated, taking turns in one job")
    p.add_argument("--out", required=True, help="JSON written by rank 0")
    config.add_run_options(p, WORKER_RUN_OPTIONS,
                           defaults={"model": "resnet18_cifar", "image_size": 32, "threads": 1})
    p.add_argument("--rounds", type=int, default=3, help="turns of every strategy")
    p.add_argument("--block-steps", type=int, default=4,
                   help="steps per turn (the first one untimed)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda: this local rank's GPU")
    add_compute_option(p)
    p.add_argument("--comm-cpu", type=int, default=None,
                   help="pin the threads hvd.init() started to this CPU and compute to the "
                        "others (emulates a core to spare for communication)")
    p.add_argument("--probe-allreduce", type=int, default=0,
                   help="after training, time this many blocking model-size averages")
    p.add_argument("--probe-sizes", action="store_true",
                   help="with --probe-allreduce: also time averages of 1/64, 1/16 and 1/4 "
                        "of the model (for fitting latency and bandwidth)")
    p.add_argument("--probe-bytes", default="",
                   help="with --probe-allreduce: time averages of these sizes in bytes and of "
                        "the model instead (comma-separated; slowest rank's median)")
    p.add_argument("--periods", default="",
                   help="NAME=H,...: the averaging period of single contenders where it "
                        "differs from --period (e.g. local=4,postlocal=4)")
    p.add_argument("--delay-max", type=int, default=None,
                   help="the largest d --delay auto may choose (default: DaSGD's)")
    p.add_argument("--warmup-turn", action="store_true",
                   help="one untimed turn of every contender before the first round")
    return p


def parse_worker_args(argv=None):
    p = worker_parser()
    args = p.parse_args(argv)
    config.check_run_options(p, args, WORKER_RUN_OPTIONS)
    check_compute_option(p, args)
    try:
        args.periods = parse_periods(args.periods, CONTENDERS)
        if args.delay_max is not None:
            check_delay_max(args.delay_max)
    except ValueError as exc:
        p.error(str(exc))
    return args


if __name__ == "__main__":
    run_worker(parse_worker_args())
