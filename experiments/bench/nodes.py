"""Allreduce timing by message size (slowest rank's median), for the alpha-beta model of
the per-node-link benchmark (launch.bench_nodes, experiments/bench/node_model.py); the step
benchmark's worker calls time_allreduces() with --probe-bytes, and this module runs it alone.

    python -m experiments.bench.nodes --sizes 65536,1048576 --repeats 5 --out allreduce.json
"""
import argparse
import json
import socket
import statistics
import time


def time_allreduces(hvd, torch, sizes, repeats):
    """[(bytes, median seconds)] of blocking float32 averages; the first call of each
    size (connection and buffer set-up) is not timed."""
    points = []
    for nbytes in sizes:
        buf = torch.zeros(max(1, nbytes // 4))
        name = f"bench.nodes.{nbytes}"
        hvd.allreduce_(buf, op=hvd.Average, name=name)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            hvd.allreduce_(buf, op=hvd.Average, name=name)
            times.append(time.perf_counter() - start)
        # The slowest rank's view: a collective ends when the last rank has its result.
        worst = hvd.allreduce(torch.tensor([statistics.median(times)]), op=hvd.Max,
                              name=f"{name}.max")
        points.append((4 * buf.numel(), float(worst)))
    return points


def run_worker(args):
    import horovod.torch as hvd
    import torch
    hvd.init()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    points = time_allreduces(hvd, torch, sizes, args.repeats)
    hosts = hvd.allgather_object(socket.gethostname())
    if hvd.rank() == 0:
        with open(args.out, "w") as f:
            json.dump({"workers": hvd.size(), "hosts": hosts,
                       "allreduce": [{"workers": hvd.size(), "bytes": n, "seconds": s}
                                     for n, s in points]}, f, indent=1)


def worker_parser():
    p = argparse.ArgumentParser(prog="python -m experiments.bench.nodes",
                                description="one rank of the allreduce-by-size timing")
    p.add_argument("--sizes", required=True, help="message sizes in bytes, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", required=True, help="JSON written by rank 0")
    return p


if __name__ == "__main__":
    run_worker(worker_parser().parse_args())
