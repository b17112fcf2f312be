"""python -m launch.train: train a model on one or many ranks.

Runs unchanged under horovodrun, mpirun and srun --mpi=pmix. See --help.
"""
import argparse
import os
import sys
import time

DEFAULTS = dict(model="small_cnn", dataset="digits", norm="inv", strategy="dasgd")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (those options explain their fallback themselves)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


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
        formatter_class=_HelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=DEFAULTS["model"],
                   help="model name: small_cnn, resnet18_cifar, resnet20, resnet56, "
                        "resnet18, resnet50, vgg11, vgg16, vit_tiny")
    g.add_argument("--norm", default=DEFAULTS["norm"], choices=["bn", "inv", "none"],
                   help="bn = BatchNorm, inv = the invariance layer, none = plain convs")
    g.add_argument("--dataset", default=DEFAULTS["dataset"],
                   help="digits (bundled with scikit-learn), cifar10, cifar100, "
                        "imagefolder, synthetic")
    g.add_argument("--data-dir", default=None, help="dataset location on disk")
    g.add_argument("--image-size", type=int, default=None,
                   help="image size for imagefolder/synthetic data; none given: 224 for "
                        "imagefolder, 32 for synthetic")
    g = p.add_argument_group("distributed strategy")
    g.add_argument("--strategy", default=DEFAULTS["strategy"],
                   choices=["none", "sync", "local", "dasgd"],
                   help="none: ranks train independently (models averaged only at "
                        "evaluation and checkpoints); sync: Horovod DistributedOptimizer; "
                        "local: blocking model averaging every --period steps; dasgd: "
                        "delayed averaging that overlaps communication with compute")
    g.add_argument("--period", type=int, default=1, help="H: steps between averages")
    g.add_argument("--delay", type=int, default=1,
                   help="d: steps an average travels before it is merged (dasgd)")
    g.add_argument("--warmup-steps", type=int, default=0,
                   help="synchronous steps before DaSGD starts")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=15, help="passes over the training set")
    g.add_argument("--batch-size", type=int, default=32, help="batch per rank")
    g.add_argument("--lr", type=float, default=0.1,
                   help="learning rate of one worker; see --lr-scaling")
    g.add_argument("--lr-scaling", default="linear", choices=["linear", "none"],
                   help="linear: multiply --lr by the number of ranks")
    g.add_argument("--schedule", default="cosine", choices=["cosine", "step"],
                   help="per step: cosine to 0, or 10x drops at 50%% and 75%% of training")
    g.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear warm-up from --lr to the scaled lr (from 0 when they are "
                        "equal: one rank or --lr-scaling none)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the model init, the data split, shuffling and augmentation")
    g.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many steps in total (0: all epochs)")
    g = p.add_argument_group("run, checkpoints and logging")
    g.add_argument("--out", default=None,
                   help="output directory; none given: runs/<time>_<model>_<norm>_<strategy>_np<N>")
    g.add_argument("--checkpoint-interval", type=int, default=0,
                   help="also checkpoint every N steps (0: only at the end of each epoch)")
    g.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                   help="continue from the newest checkpoint in --out (or from CKPT)")
    g.add_argument("--stop-after-epochs", type=int, default=0,
                   help="checkpoint and exit after this many epochs in this invocation "
                        "(time-sliced jobs; continue with --resume)")
    g.add_argument("--log-interval", type=int, default=10, help="steps per metrics line")
    g.add_argument("--progress", default="auto", choices=["auto", "always", "never"],
                   help="tqdm bar on rank 0: auto = only when stderr is a terminal")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: one GPU per rank (local rank) when CUDA is available, else "
                        "the CPU. GPU runs need a Horovod built with GPU support")
    g.add_argument("--threads", type=int, default=0,
                   help="torch threads per rank (0: $OMP_NUM_THREADS, else the cores this "
                        "process may use / ranks on this node)")
    return p


def check_args(args):
    """Problems visible from the arguments alone (ValueError, one line)."""
    for name in ("epochs", "batch_size", "period", "keep", "log_interval"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, "
                             f"got {getattr(args, name)}")
    for name in ("delay", "warmup_steps", "max_steps", "checkpoint_interval", "threads",
                 "stop_after_epochs", "weight_decay", "momentum", "warmup_epochs"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, "
                             f"got {getattr(args, name)}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")


def default_out(args, size):
    """Same name on every rank: rank 0's clock is broadcast."""
    import horovod.torch as hvd
    stamp = hvd.broadcast_object(time.strftime("%Y%m%d-%H%M%S"), root_rank=0, name="run.stamp")
    return os.path.join("runs", f"{stamp}_{args.model}_{args.norm}_{args.strategy}_np{size}")


def main(argv=None):
    args = parser().parse_args(argv)
    args.data_options = {"image_size": args.image_size} if args.image_size else {}
    started = time.time()
    from toolkit import dist
    from toolkit.checkpoint import CheckpointError
    from toolkit.data import DataError
    from toolkit.strategies import CommunicationError
    from toolkit.train import Diverged, train
    from toolkit.metrics import write_json
    try:
        check_args(args)
        ctx = dist.init(args.strategy, args.delay)
        if args.out is None:
            args.out = default_out(args, ctx.size)
        ctx, summary = train(args)
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
        write_json(os.path.join(args.out, "summary.json"), summary)
        acc = summary["test_acc"]
        acc_text = "none" if acc is None else f"{acc:.3f}"
        dist.line_print(f"final: test_acc={acc_text} images_per_s={summary['images_per_s']:.1f} "
                        f"metrics={summary['metrics']} checkpoint={summary['checkpoint']}")


if __name__ == "__main__":
    main()
