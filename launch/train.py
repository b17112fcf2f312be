"""python -m launch.train: train a model on one or many ranks.

Runs unchanged under horovodrun, mpirun and srun --mpi=pmix. See --help.
"""
import argparse
import os
import sys
import time

from toolkit import config


def parser():
    p = argparse.ArgumentParser(
        prog="python -m launch.train",
        description="Train a vision model with Horovod: the invariance layer (--norm inv) "
                    "and DaSGD (--strategy dasgd) or the usual BatchNorm + synchronous SGD. "
                    "Launch with `horovodrun -np N -H localhost:N python -m launch.train`, "
                    "`mpirun -np N python -m launch.train` or `srun --mpi=pmix python -m "
                    "launch.train`; without a launcher it trains on one rank.",
        epilog="Outputs in --out: metrics.jsonl (per interval and per epoch), summary.json, "
               "config.json, checkpoints/ckpt-<step>.pt. The last line printed is "
               "`final: test_acc=... images_per_s=... metrics=PATH checkpoint=PATH`. "
               "Exit codes: 0 done (or stopped cleanly by SIGTERM/SIGUSR1 after a "
               "checkpoint), 2 bad input or a file that cannot be read or written, 3 training "
               "diverged, 4 a collective stalled or failed (another rank died or diverged "
               "from the others).",
        formatter_class=config._HelpFormatter)
    p.add_argument("--config", default=None, metavar="FILE",
                   help="start from the options saved in a run's config.json (flags given "
                        "here override them; --out and --resume are not taken from it)")
    config.add_options(p)
    return p


def default_out(cfg, size):
    """Same name on every rank: rank 0's clock is broadcast."""
    import horovod.torch as hvd
    stamp = hvd.broadcast_object(time.strftime("%Y%m%d-%H%M%S"), root_rank=0, name="run.stamp")
    return os.path.join("runs", f"{stamp}_{cfg.model}_{cfg.norm}_{cfg.strategy}_np{size}")


def main(argv=None):
    started = time.time()
    from toolkit import dist
    from toolkit.checkpoint import CheckpointError
    from toolkit.data import DataError
    from toolkit.strategies import CommunicationError
    from toolkit.train import Diverged, train
    from toolkit.metrics import write_json
    try:
        cfg = config.parse(parser(), argv)
        ctx = dist.init(cfg.strategy, cfg.delay)
        if cfg.out is None:
            cfg.out = default_out(cfg, ctx.size)
        summary = train(cfg, ctx)
    except dist.LaunchError as exc:
        dist.fail(str(exc))
    except (ValueError, DataError, CheckpointError, FileNotFoundError) as exc:
        # Bad input: every rank finds the same problem, rank 0 says it once.
        if dist.launcher_rank() == 0:
            dist.fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        sys.exit(2)
    except (Diverged, CommunicationError, OSError) as exc:
        # Possibly seen by one rank only (a full disk on rank 0, a file one node cannot
        # read): every rank that sees it says so.
        rank = dist.launcher_rank()
        where = f"rank {rank}: " if rank else ""
        dist.line_print(f"error: {where}{exc}", file=sys.stderr)
        # Other ranks may be blocked in a collective: leave at once, the launcher ends them.
        os._exit(3 if isinstance(exc, Diverged) else 4 if isinstance(
            exc, CommunicationError) else 2)
    summary["wall_s"] = time.time() - started
    if ctx.is_root:
        write_json(os.path.join(cfg.out, "summary.json"), summary)
        acc = summary["test_acc"]
        acc_text = "none" if acc is None else f"{acc:.3f}"
        dist.line_print(f"final: test_acc={acc_text} images_per_s={summary['images_per_s']:.1f} "
                        f"metrics={summary['metrics']} checkpoint={summary['checkpoint']}")


if __name__ == "__main__":
    main()
