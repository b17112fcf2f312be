"""Per-rank part of the communication-hiding benchmark, and the arithmetic on its results.

Every rank trains a model on synthetic CIFAR-shaped batches (generated here from a seeded
torch generator, so no dataset is needed) under one strategy and times each step; rank 0
writes the per-step medians of all ranks as JSON. launch/bench_comm.py starts these jobs
inside a rate-limited network namespace and compares the strategies.

    python -m toolkit.bench.comm --strategy dasgd --out result.json [--probe-allreduce 3]
"""
import argparse
import json
import re
import statistics
import time

import torch

RATE_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$")
RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


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
    """Ratios to `none` and the hidden fraction (sync - dasgd) / (sync - none)."""
    none, sync, dasgd = step_s["none"], step_s["sync"], step_s["dasgd"]
    out = {"dasgd_over_none": dasgd / none, "sync_over_none": sync / none}
    if "local" in step_s:
        out["local_over_none"] = step_s["local"] / none
    exposed = sync - none
    # With no communication cost to hide the fraction is undefined, not 1.
    out["hidden_fraction"] = (sync - dasgd) / exposed if exposed > 0 else None
    return out


def synthetic_batches(count, batch_size, channels, image_size, num_classes, seed):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, channels, image_size, image_size, generator=gen),
             torch.randint(0, num_classes, (batch_size,), generator=gen))
            for _ in range(count)]


def probe_allreduce(hvd, numel, repeats):
    """Seconds per blocking average of `numel` floats (the size DaSGD sends per round)."""
    buf = torch.zeros(numel)
    hvd.allreduce_(buf, op=hvd.Average, name="bench.probe")  # connection set-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        hvd.allreduce_(buf, op=hvd.Average, name="bench.probe")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_worker(args):
    from toolkit.dasgd import apply_stall_defaults, make_strategy
    apply_stall_defaults()
    import horovod.torch as hvd
    hvd.init()
    torch.set_num_threads(args.threads)
    from models import build_model
    torch.manual_seed(args.seed)
    model = build_model(args.model, num_classes=10, in_channels=3, image_size=args.image_size,
                        norm="bn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    strategy = make_strategy(args.strategy, model, optimizer, period=args.period,
                             delay=args.delay)
    batches = synthetic_batches(4, args.batch_size, 3, args.image_size, 10,
                                seed=args.seed * 1000 + hvd.rank())
    loss_fn = torch.nn.CrossEntropyLoss()
    times, wait_at_start = [], 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            wait_at_start = strategy.comm_wait_s
        x, y = batches[step % len(batches)]
        start = time.perf_counter()
        strategy.optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        strategy.step()
        times.append(time.perf_counter() - start)
    measured = times[args.warmup:]
    mine = torch.tensor([statistics.median(measured),
                         (strategy.comm_wait_s - wait_at_start) / len(measured)],
                        dtype=torch.float64)
    # Every rank completes its collectives before anyone leaves (no round left in flight).
    strategy.flush()
    everyone = hvd.allgather(mine.unsqueeze(0), name="bench.result")
    numel = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.buffers() if b.is_floating_point())
    probe = probe_allreduce(hvd, numel, args.probe_allreduce) if args.probe_allreduce else None
    if hvd.rank() == 0:
        result = {"strategy": args.strategy, "model": args.model, "ranks": hvd.size(),
                  "batch_per_rank": args.batch_size, "steps": args.steps,
                  "period": args.period, "delay": args.delay,
                  # The job moves at the pace of its slowest rank.
                  "step_s": float(everyone[:, 0].max()),
                  "step_s_per_rank": everyone[:, 0].tolist(),
                  "comm_wait_s_per_step": float(everyone[:, 1].max()),
                  "model_bytes": 4 * numel, "allreduce_s": probe}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


def worker_parser():
    p = argparse.ArgumentParser(prog="python -m toolkit.bench.comm",
                                description="one rank of the communication-hiding benchmark")
    p.add_argument("--strategy", required=True, choices=("none", "sync", "local", "dasgd"))
    p.add_argument("--out", required=True, help="JSON written by rank 0")
    p.add_argument("--model", default="resnet18_cifar")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--period", type=int, default=1)
    p.add_argument("--delay", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-allreduce", type=int, default=0,
                   help="after training, time this many blocking model-size averages")
    return p


if __name__ == "__main__":
    run_worker(worker_parser().parse_args())
