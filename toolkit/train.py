"""The training loop: short and linear, like Horovod's PyTorch examples.

Every rank computes; rank 0 prints, writes metrics and checkpoints. Every point where the
model must be the same on all ranks (evaluation, checkpoint) goes through
strategy.synchronize_model(), so resuming from any checkpoint continues the same trajectory.
"""
import math
import os
import socket
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from toolkit import dist
from toolkit.checkpoint import Checkpointer, CheckpointError, load_checkpoint
from toolkit.data import load_dataset, shard_loader, steps_per_epoch
from toolkit.metrics import Meter, MetricsLog, write_json
from toolkit.preemption import PreemptionFlag, StopVote
from toolkit.schedule import lr_at, scaled_lr


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


def resolve_device(name, local_rank):
    """--device: auto = this rank's GPU (local rank modulo the visible GPUs) when CUDA is
    available, else the CPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to this process "
                         f"(torch {torch.__version__} reports none)")
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def evaluate(model, dataset, ctx, batch_size, device=torch.device("cpu")):
    """Test loss and accuracy over the whole test set (each rank scores its shard)."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for x, y in shard_loader(dataset, batch_size, ctx.rank, ctx.size, 0, 0, train=False):
            x, y = x.to(device), y.to(device)
            out = model(x)
            totals += torch.tensor([F.cross_entropy(out, y, reduction="sum").item(),
                                    (out.argmax(1) == y).sum().item(), len(y)],
                                   dtype=torch.float64)
    model.train()
    loss_sum, correct, n = dist.allreduce_sum(totals, name="eval.totals").tolist()
    return loss_sum / n, correct / n


def default_threads(ranks_on_node):
    """OMP_NUM_THREADS when the launcher set it (SLURM templates do), else the cores this
    process may run on (cgroups/affinity, not the whole node) shared by the node's ranks."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, len(os.sched_getaffinity(0)) // ranks_on_node)


def show_progress(mode):
    """auto: a bar only on a terminal. Launchers pipe every rank's output, where redrawn
    bars turn into noise between the per-epoch lines; `always` forces it."""
    return mode == "always" or (mode == "auto" and sys.stderr.isatty())


def run_config(args, ctx):
    """What a checkpoint must agree with to be resumed by this run."""
    return {"model": args.model, "norm": args.norm, "dataset": args.dataset,
            "world_size": ctx.size, "batch_per_rank": args.batch_size,
            "strategy": args.strategy, "period": args.period, "delay": args.delay,
            "seed": args.seed}


def check_out_dir(path):
    """--out must be a directory we can create or write into (checked before any work)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path} exists and is not a directory")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: no permission to write in {parent}")


def prepare(args, ctx):
    """Data, model, optimizer strategy and (with --resume) the checkpoint to continue from.
    Everything that can be wrong with the input is found here, before anything is written."""
    from models import build_model
    from toolkit.dasgd import make_strategy

    check_out_dir(args.out)
    device = resolve_device(getattr(args, "device", "cpu"), ctx.local_rank)
    ckpts = Checkpointer(os.path.join(args.out, "checkpoints"), keep=args.keep)
    data = load_dataset(args.dataset, args.data_dir, seed=args.seed, **args.data_options)
    if steps_per_epoch(len(data.train), args.batch_size, ctx.size) == 0:
        raise ValueError(f"--batch-size {args.batch_size} x {ctx.size} ranks exceeds the "
                         f"{len(data.train)} training images of {args.dataset}")
    torch.manual_seed(args.seed)
    model = build_model(args.model, num_classes=data.num_classes, in_channels=data.in_channels,
                        image_size=data.image_size, norm=args.norm).to(device)
    peak_lr = scaled_lr(args.lr, ctx.size, args.lr_scaling)
    optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    strategy = make_strategy(args.strategy, model, optimizer, period=args.period,
                             delay=args.delay, warmup_steps=args.warmup_steps)
    state = None
    if args.resume:
        path = ckpts.latest() if args.resume == "latest" else args.resume
        if path is None:
            raise CheckpointError(f"--resume: no checkpoint in {ckpts.directory}")
        state = load_checkpoint(path, expect=run_config(args, ctx))
        newest = ckpts.latest()
        if newest is not None and ckpts.step_of(newest) > state["step"]:
            raise CheckpointError(
                f"--resume {path} is at step {state['step']} but {newest} is newer: resuming "
                f"there would mix two runs in {ckpts.directory}; move the newer checkpoints "
                f"away or choose another --out")
        model.load_state_dict(state["model"])
        strategy.load_state_dict(state["strategy"])
        torch.set_rng_state(state["rng"])
        dist.root_print(ctx, f"resumed from {path} at epoch {state['epoch']} "
                        f"step {state['step']}")
    elif ckpts.latest() is not None:
        raise CheckpointError(f"{args.out} already holds checkpoints; pass --resume to "
                              f"continue that run or choose another --out")
    else:
        import horovod.torch as hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    return data, model, strategy, ckpts, state, peak_lr, device


def train_step(model, strategy, x, y, lr):
    """One optimizer step; returns (loss, correct predictions)."""
    for group in strategy.optimizer.param_groups:
        group["lr"] = lr
    strategy.optimizer.zero_grad()
    output = model(x)
    loss = F.cross_entropy(output, y)
    if not math.isfinite(loss.item()):
        raise Diverged(f"loss is {loss.item()}")
    loss.backward()
    strategy.step()
    return loss.item(), (output.argmax(1) == y).sum().item()


def train(args):
    ctx = dist.init(args.strategy, args.delay)
    torch.set_num_threads(args.threads or default_threads(ctx.local_size))
    out = args.out
    data, model, strategy, ckpts, state, peak_lr, device = prepare(args, ctx)
    steps_epoch = steps_per_epoch(len(data.train), args.batch_size, ctx.size)
    step, epoch, step_in_epoch = (state["step"], state["epoch"], state["step_in_epoch"]) \
        if state else (0, 0, 0)

    total_steps = steps_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    warmup_steps = int(args.warmup_epochs * steps_epoch)
    log = MetricsLog(os.path.join(out, "metrics.jsonl"), enabled=ctx.is_root)
    if ctx.is_root:
        os.makedirs(out, exist_ok=True)
        write_json(os.path.join(out, "config.json"), dict(vars(args), world_size=ctx.size,
                                                          launcher=ctx.launcher))
    dist.root_print(ctx, f"training {args.model} (norm={args.norm}) on {args.dataset} with "
                    f"{args.strategy} over {ctx.size} rank(s) [{ctx.launcher}]: "
                    f"{steps_epoch} steps/epoch x {args.epochs} epochs, batch {args.batch_size}"
                    f"/rank, lr {peak_lr:g}")

    preempt = PreemptionFlag()
    vote = StopVote()
    ckpt_path, saved_step = ckpts.latest(), (step if state is not None else None)
    train_seconds, train_images, epochs_this_run, last = 0.0, 0, 0, {}
    interval, epoch_meter = Meter(), Meter()
    comm_mark = strategy.comm_wait_s
    stopped_by = None

    def checkpoint():
        """Same model on every rank, then rank 0 writes it (refusing a diverged model)."""
        nonlocal ckpt_path, saved_step
        if saved_step == step:
            return
        vote.drain()
        strategy.synchronize_model()
        if not all(torch.isfinite(t).all() for t in model.state_dict().values()
                   if t.is_floating_point()):
            raise Diverged(f"the model holds NaN/inf at step {step}; kept the last good "
                           f"checkpoint {ckpt_path}")
        if ctx.is_root:
            ckpt_path = ckpts.save({
                "config": run_config(args, ctx), "model": model.state_dict(),
                "strategy": strategy.state_dict(), "step": step, "epoch": epoch,
                "step_in_epoch": step_in_epoch, "rng": torch.get_rng_state(),
                "args": vars(args)}, step)
        saved_step = step

    while epoch < args.epochs and step < total_steps:
        loader = shard_loader(data.train, args.batch_size, ctx.rank, ctx.size, args.seed,
                              epoch, train=True, start_step=step_in_epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                   disable=not (ctx.is_root and show_progress(args.progress)),
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        epoch_meter.reset()
        epoch_comm_mark = strategy.comm_wait_s
        t0 = time.perf_counter()  # step time includes loading its batch
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = lr_at(step, peak_lr=peak_lr, total_steps=total_steps,
                       warmup_steps=warmup_steps, schedule=args.schedule, start_lr=args.lr)
            try:
                loss, correct = train_step(model, strategy, x, y, lr)
            except Diverged as exc:
                raise Diverged(f"{exc} at step {step + 1} (epoch {epoch + 1}); last good "
                               f"checkpoint: {ckpt_path}") from None
            seconds = time.perf_counter() - t0
            step, step_in_epoch = step + 1, step_in_epoch + 1
            for meter in (interval, epoch_meter):
                meter.add(loss, correct, len(y), seconds)
            train_seconds += seconds
            train_images += len(y) * ctx.size
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}", refresh=False)
            if step % args.log_interval == 0:
                log.write("interval", epoch=epoch + 1, step=step, loss=interval.loss,
                          acc=interval.acc, lr=lr,
                          images_per_s=interval.samples * ctx.size / interval.seconds,
                          comm_wait_s=strategy.comm_wait_s - comm_mark)
                comm_mark = strategy.comm_wait_s
                interval.reset()
            if vote.decide(preempt.requested):
                stopped_by = preempt.signal_name or "a signal on another rank"
                break
            if args.checkpoint_interval and step % args.checkpoint_interval == 0:
                checkpoint()
            if step >= total_steps:
                break
            t0 = time.perf_counter()  # the next step's clock: its batch loading, not the checkpoint
        bar.close()
        if stopped_by is not None:
            checkpoint()
            dist.root_print(ctx, f"stopped by {stopped_by} at step {step}: checkpoint "
                            f"{ckpt_path}; continue with --resume")
            break
        if step_in_epoch >= steps_epoch:
            epoch, step_in_epoch, epochs_this_run = epoch + 1, 0, epochs_this_run + 1
        checkpoint()
        test_loss, test_acc = evaluate(model, data.test, ctx, args.batch_size, device)
        last = {"test_loss": test_loss, "test_acc": test_acc}
        log.write("epoch", epoch=epoch, step=step, train_loss=epoch_meter.loss,
                  train_acc=epoch_meter.acc, test_loss=test_loss, test_acc=test_acc,
                  images_per_s=epoch_meter.samples * ctx.size / max(epoch_meter.seconds, 1e-9),
                  comm_wait_s=strategy.comm_wait_s - epoch_comm_mark)
        dist.root_print(ctx, f"epoch {epoch}/{args.epochs} step {step}: train_loss="
                        f"{epoch_meter.loss:.4f} test_loss={test_loss:.4f} "
                        f"test_acc={test_acc:.4f} images/s="
                        f"{epoch_meter.samples * ctx.size / max(epoch_meter.seconds, 1e-9):.0f}")
        if args.stop_after_epochs and epochs_this_run >= args.stop_after_epochs:
            stopped_by = f"--stop-after-epochs {args.stop_after_epochs}"
            dist.root_print(ctx, f"stopped by {stopped_by} at step {step}: checkpoint "
                            f"{ckpt_path}; continue with --resume")
            break

    if not last:  # resumed a run that had already finished: score it once more
        checkpoint()
        last = dict(zip(("test_loss", "test_acc"),
                        evaluate(model, data.test, ctx, args.batch_size, device)))
    vote.drain()
    summary = {**run_config(args, ctx), "global_batch": args.batch_size * ctx.size,
               "epochs": args.epochs, "epochs_done": epoch, "steps": step, "lr": peak_lr,
               "test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"),
               "images_per_s": train_images / max(train_seconds, 1e-9),
               "step_s": train_seconds / max(step - (state["step"] if state else 0), 1),
               "comm_wait_s": strategy.comm_wait_s, "wall_s": None,
               "metrics": os.path.abspath(log.path), "checkpoint": os.path.abspath(ckpt_path)
               if ckpt_path else None, "hostname": socket.gethostname(),
               "launcher": ctx.launcher, "device": str(device), "stopped_by": stopped_by}
    return ctx, summary
