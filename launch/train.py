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
        epilog="Outputs in --out: metrics.jsonl (per interval, per evaluation and per epoch), "
               "tensorboard/ (the same scalars as TensorBoard event files), summary.json, "
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
    # First, before torch loads: a stop signal during start-up is remembered, not fatal.
    from toolkit import preemption
    stop = preemption.install()
    started = time.time()
    from toolkit import errors, job, orphan_watch
    try:
        # From the start too: a launcher that dies while the ranks load is noticed.
        watch = orphan_watch.watch(stop, job.detect_launcher(), job.launcher_rank())
        cfg = config.parse(parser(), argv)
    except ValueError as exc:
        errors.single_rank_setup_error(exc, job.launcher_rank())
    # Every failure ends in one line and its exit code (toolkit/errors.py, docs/faults.md).
    try:
        ctx, trainer = set_up(cfg)
    except Exception as exc:
        errors.report_and_exit(exc, job.launcher_rank(), during_setup=True, debug=cfg.debug)
    try:
        run(cfg, ctx, trainer, started)
    except Exception as exc:
        errors.report_and_exit(exc, ctx.rank, during_setup=False, debug=cfg.debug)
    preemption.finished()
    if watch is not None and watch.parent_gone():
        # Our launcher is gone: Horovod's shutdown at exit would wait for it forever.
        sys.stdout.flush()
        os._exit(0)


def set_up(cfg):
    """Horovod and the Trainer (data, model, strategy, resume)."""
    from toolkit import job
    from toolkit.train import Trainer
    ctx = job.init(cfg.strategy, cfg.delay)
    if cfg.out is None:
        cfg.out = default_out(cfg, ctx.size)
    return ctx, Trainer(cfg, ctx)


def run(cfg, ctx, trainer, started):
    """Train, then rank 0 writes summary.json and prints the final line."""
    from toolkit import job
    from toolkit.metrics import write_json
    trainer.fit()
    summary = trainer.summary()
    summary["wall_s"] = time.time() - started
    if ctx.is_root:
        write_json(os.path.join(cfg.out, "summary.json"), summary)
        job.line_print(plot_line(cfg.out))
        acc = summary["test_acc"]
        acc_text = "none" if acc is None else f"{acc:.3f}"
        job.line_print(f"final: test_acc={acc_text} images_per_s={summary['images_per_s']:.1f} "
                       f"metrics={summary['metrics']} checkpoint={summary['checkpoint']}")


def plot_line(out):
    """Draws the run's plot.png; returns the line to print. The plotting code
    (experiments/curves.py) is in the source checkout only: an installed toolkit notes that."""
    try:
        from experiments.curves import plot_finished_run
    except ModuleNotFoundError as exc:
        if exc.name not in ("experiments", "experiments.curves"):
            raise
        return ("note: no plot.png (experiments/curves.py, which draws it, is in the source "
                "checkout only)")
    return plot_finished_run(out)


if __name__ == "__main__":
    main()
