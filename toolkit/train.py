"""The training loop: named steps, like Horovod's PyTorch examples.

    trainer = Trainer(cfg, ctx)   # set-up: device, data, model, strategy, resume
    trainer.fit()                 # epochs: train_epoch -> checkpoint -> evaluate -> log
    trainer.summary()

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

from toolkit import job
from toolkit.checkpoint import Checkpointer, CheckpointError, load_checkpoint
from toolkit.config import RunConfig
from toolkit.data import load_dataset, steps_per_epoch
from toolkit.data.pipeline import TrainLoader, default_workers
from toolkit.evaluation import evaluate, scores_text
from toolkit.metrics import (Meter, MetricsLog, TensorBoardLog, load_summary_writer,
                             tensorboard_installed, write_json)
from toolkit.optim import build_optimizer, parse_betas
from toolkit.placement import default_threads, resolve_device
from toolkit.precision import LossScale, autocast, check_amp
from toolkit.preemption import StopVote, install as stop_flag
from toolkit.schedule import lr_at, scaled_lr


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


def show_progress(mode):
    """auto: a bar only on a terminal. Launchers pipe every rank's output, where redrawn
    bars turn into noise between the per-epoch lines; `always` forces it."""
    return mode == "always" or (mode == "auto" and sys.stderr.isatty())


def run_config(cfg, ctx):
    """What a checkpoint must agree with to be resumed by this run."""
    keys = cfg.resume_keys()
    keys["batch_per_rank"] = keys.pop("batch_size")
    return {**keys, "world_size": ctx.size}


def check_out_dir(path):
    """--out must be a directory we can create or write into (checked before any work)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path} exists and is not a directory")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {path}: {parent} is not a directory")
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        raise ValueError(f"--out {path}: {parent} is on a read-only file system")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: no permission to write in {parent}")


def train_step(model, strategy, x, y, lr, *, amp="off", label_smoothing=0.0, loss_scale=None):
    """One optimizer step; returns (loss, correct predictions). The forward pass and the
    loss run under autocast (--amp); with fp16 the loss is scaled before backward and the
    optimizer unscales (toolkit.optim)."""
    for group in strategy.optimizer.param_groups:
        group["lr"] = lr
    strategy.optimizer.zero_grad()
    with autocast(amp, x.device):
        output = model(x)
        loss = F.cross_entropy(output, y, label_smoothing=label_smoothing)
    if not math.isfinite(loss.item()):
        raise Diverged(f"loss is {loss.item()}")
    (loss_scale.scale_loss(loss) if loss_scale is not None else loss).backward()
    strategy.step()
    return loss.item(), (output.argmax(1) == y).sum().item()


def build_model(cfg, data, device):
    from models import build_model as build
    layer_options = cfg.layer_options() if cfg.norm == "inv" else None
    return build(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels,
                 image_size=data.image_size, norm=cfg.norm,
                 layer_options=layer_options).to(device)


class Trainer:
    """One run: its set-up, its position (epoch, step) and the steps of an epoch."""

    def __init__(self, cfg, ctx):
        self.cfg, self.ctx = cfg, ctx
        torch.set_num_threads(cfg.threads or default_threads(ctx.local_size))
        check_out_dir(cfg.out)
        self.device = resolve_device(cfg.device, ctx.local_rank)
        check_amp(cfg.amp, self.device)
        self.ckpts = Checkpointer(os.path.join(cfg.out, "checkpoints"), keep=cfg.keep)
        self.data = load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed, **cfg.data_options())
        self.steps_epoch = steps_per_epoch(len(self.data.train), cfg.batch_size, ctx.size)
        if self.steps_epoch == 0:
            raise ValueError(f"--batch-size {cfg.batch_size} x {ctx.size} ranks exceeds the "
                             f"{len(self.data.train)} training images of {cfg.dataset}")
        self.train_loader = TrainLoader(
            self.data.train, cfg.batch_size, ctx.rank, ctx.size, cfg.seed,
            workers=cfg.workers if cfg.workers is not None else
            default_workers(ctx.local_size, torch.get_num_threads()),
            pin_memory=self.device.type == "cuda")
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.data, self.device)
        self.peak_lr = scaled_lr(cfg.lr, ctx.size, cfg.lr_scaling)
        self.strategy = self._make_strategy()  # broadcasts rank 0's model
        self.total_steps = self.steps_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.warmup_steps = int(cfg.warmup_epochs * self.steps_epoch)
        self.step = self.epoch = self.step_in_epoch = 0
        self.start_step, self.resumed = 0, self._resume()
        self.ckpt_path = self.ckpts.latest()
        self.saved_step = self.step if self.resumed else None
        self.log = MetricsLog(os.path.join(cfg.out, "metrics.jsonl"), enabled=ctx.is_root,
                              tensorboard=self._tensorboard_log() if ctx.is_root else None)
        self.preempt, self.vote = stop_flag(), StopVote()  # launch.train installed it first
        self.train_seconds, self.train_images, self.epochs_this_run = 0.0, 0, 0
        self.last_eval, self.stopped_by = {}, None
        self.delay_change = None  # (old d, new d) of --delay auto in this epoch
        self.delay_decisions_logged = len(getattr(self.strategy, "delay_log", ()))

    def _make_strategy(self):
        from toolkit.strategies import make_strategy
        cfg = self.cfg
        self.loss_scale = LossScale() if cfg.amp == "fp16" else None
        optimizer = build_optimizer(self.model, cfg.optimizer, lr=self.peak_lr,
                                    momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    betas=parse_betas(cfg.betas), grad_clip=cfg.grad_clip,
                                    loss_scale=self.loss_scale)
        return make_strategy(self.cfg.strategy, self.model, optimizer, period=self.cfg.period,
                             delay=self.cfg.delay, warmup_steps=self.cfg.warmup_steps,
                             avg_dtype=self.cfg.avg_dtype, fragments=self.cfg.fragments)

    def _resume(self):
        """Loads the checkpoint --resume names; refuses to write over another run's."""
        cfg = self.cfg
        if not cfg.resume:
            if self.ckpts.latest() is not None:
                raise CheckpointError(f"{cfg.out} already holds checkpoints; pass --resume to "
                                      f"continue that run or choose another --out")
            return False
        path = self.ckpts.latest() if cfg.resume == "latest" else cfg.resume
        if path is None:
            raise CheckpointError(f"--resume: no checkpoint in {self.ckpts.directory}")
        state = load_checkpoint(path, expect=run_config(cfg, self.ctx),
                                defaults=run_config(RunConfig(), self.ctx))
        newest = self.ckpts.latest()
        if newest is not None and self.ckpts.step_of(newest) > state["step"]:
            raise CheckpointError(
                f"--resume {path} is at step {state['step']} but {newest} is newer: resuming "
                f"there would mix two runs in {self.ckpts.directory}; move the newer "
                f"checkpoints away or choose another --out")
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        torch.set_rng_state(state["rng"])
        if self.loss_scale is not None:
            self.loss_scale.load_state_dict(state["loss_scale"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch, self.start_step = state["step_in_epoch"], state["step"]
        job.root_print(self.ctx, f"resumed from {path} at epoch {self.epoch} step {self.step}")
        return True

    def _tensorboard_log(self):
        """--tensorboard (rank 0): event files in OUT/tensorboard/, or None when it is off
        or, not asked for, the tensorboard package is not installed."""
        cfg = self.cfg
        if cfg.tensorboard is False or (cfg.tensorboard is None and not tensorboard_installed()):
            return None
        try:
            writer_class = load_summary_writer()
        except ImportError as exc:
            if cfg.tensorboard:
                raise ValueError(f"--tensorboard: cannot import tensorboard ({exc}); "
                                 f"--no-tensorboard turns it off") from None
            job.root_print(self.ctx, f"note: no TensorBoard event files: the tensorboard "
                                     f"package cannot be imported ({exc})")
            return None
        # Resumed: what an earlier file logged after the checkpoint's step is redone now.
        return TensorBoardLog(os.path.join(cfg.out, "tensorboard"), writer_class,
                              purge_step=self.step + 1 if self.resumed else None)

    # ---- the run ------------------------------------------------------------------------

    def fit(self):
        self.write_config()
        self.announce()
        while self.epoch < self.cfg.epochs and self.step < self.total_steps:
            self.train_epoch()
            if self.stopped_by is not None:
                self.checkpoint()
                self.say_stopped()
                break
            if self.step_in_epoch >= self.steps_epoch:
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self.epochs_this_run += 1
            self.recheck_delay()  # before the checkpoint, so that it records the new d
            self.checkpoint()
            self.evaluate_and_log()
            if self.cfg.stop_after_epochs and self.epochs_this_run >= self.cfg.stop_after_epochs:
                self.stopped_by = f"--stop-after-epochs {self.cfg.stop_after_epochs}"
                self.say_stopped()
                break
        if not self.last_eval:  # resumed a run that had already finished: score it once more
            self.checkpoint()
            self.last_eval = self.evaluate()
        self.vote.drain()
        self.train_loader.close()
        self.log.close()

    def write_config(self):
        if self.ctx.is_root:
            os.makedirs(self.cfg.out, exist_ok=True)
            write_json(os.path.join(self.cfg.out, "config.json"),
                       dict(self.cfg.to_dict(), world_size=self.ctx.size,
                            launcher=self.ctx.launcher))

    def announce(self):
        cfg, ctx = self.cfg, self.ctx
        job.root_print(ctx, f"training {cfg.model} (norm={cfg.norm}) on {cfg.dataset} with "
                       f"{cfg.strategy} over {ctx.size} rank(s) [{ctx.launcher}]: "
                       f"{self.steps_epoch} steps/epoch x {cfg.epochs} epochs, batch "
                       f"{cfg.batch_size}/rank, lr {self.peak_lr:g}")

    def train_epoch(self):
        """Steps until the epoch ends, the step budget is spent or a stop is agreed on."""
        cfg, ctx = self.cfg, self.ctx
        loader = self.train_loader.epoch(self.epoch, self.step_in_epoch)
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (ctx.is_root and show_progress(cfg.progress)),
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
        interval, self.epoch_meter = Meter(), Meter()
        comm_mark = self.epoch_comm_mark = self.strategy.comm_wait_s
        t0 = time.perf_counter()  # step time includes loading its batch
        for x, y in bar:
            loss, correct, lr = self.one_step(x, y)
            seconds = time.perf_counter() - t0
            for meter in (interval, self.epoch_meter):
                meter.add(loss, correct, len(y), seconds)
            self.train_seconds += seconds
            self.train_images += len(y) * ctx.size
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}", refresh=False)
            if self.step % cfg.log_interval == 0:
                self.log.write("interval", epoch=self.epoch + 1, step=self.step,
                               loss=interval.loss, acc=interval.acc, lr=lr,
                               images_per_s=interval.samples * ctx.size / interval.seconds,
                               comm_wait_s=self.strategy.comm_wait_s - comm_mark)
                comm_mark = self.strategy.comm_wait_s
                interval.reset()
            if self.vote.decide(self.preempt.requested, self.step):
                self.stopped_by = self.preempt.signal_name or self.vote.remote_reason
                break
            if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
                self.checkpoint()
            if self.step >= self.total_steps:
                break
            # self.step is the same on every rank, so all of them evaluate (collectives) at
            # the same step. The epoch's last step is left to fit(), which evaluates then.
            if cfg.eval_interval and self.step % cfg.eval_interval == 0 and \
                    self.step_in_epoch < self.steps_epoch:
                self.evaluate_at_interval()
            t0 = time.perf_counter()  # the next step's clock: its loading, not the checkpoint
        bar.close()

    def one_step(self, x, y):
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        lr = lr_at(self.step, peak_lr=self.peak_lr, total_steps=self.total_steps,
                   warmup_steps=self.warmup_steps, schedule=self.cfg.schedule,
                   start_lr=self.cfg.lr)
        try:
            loss, correct = train_step(self.model, self.strategy, x, y, lr, amp=self.cfg.amp,
                                       label_smoothing=self.cfg.label_smoothing,
                                       loss_scale=self.loss_scale)
        except Diverged as exc:
            raise Diverged(f"{exc} at step {self.step + 1} (epoch {self.epoch + 1}); last good "
                           f"checkpoint: {self.ckpt_path}") from None
        self.step, self.step_in_epoch = self.step + 1, self.step_in_epoch + 1
        return loss, correct, lr

    def recheck_delay(self):
        """--delay auto: measure again at the end of an epoch; log every change of d (the
        first decision, taken during the first epoch, included)."""
        self.delay_change = None
        if getattr(self.strategy, "recheck_delay", None) is None:
            return
        self.strategy.recheck_delay()
        log = self.strategy.delay_log
        changes = [e for e in log[self.delay_decisions_logged:] if e["delay"] != e["previous"]]
        for entry in changes:
            self.log.write("delay", epoch=self.epoch, **entry)
        if changes:
            self.delay_change = (changes[0]["previous"], changes[-1]["delay"])
        self.delay_decisions_logged = len(log)

    def checkpoint(self):
        """Same model on every rank, then rank 0 writes it (refusing a diverged model)."""
        if self.saved_step == self.step:
            return
        self.vote.drain()
        self.strategy.synchronize_model()
        if not all(torch.isfinite(t).all() for t in self.model.state_dict().values()
                   if t.is_floating_point()):
            raise Diverged(f"the model holds NaN/inf at step {self.step}; kept the last good "
                           f"checkpoint {self.ckpt_path}")
        if self.ctx.is_root:
            self.ckpt_path = self.ckpts.save({
                "config": run_config(self.cfg, self.ctx), "model": self.model.state_dict(),
                "strategy": self.strategy.state_dict(), "step": self.step,
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "rng": torch.get_rng_state(), "options": self.cfg.to_dict(),
                "loss_scale": self.loss_scale.state_dict() if self.loss_scale else None},
                self.step)
        self.saved_step = self.step

    def evaluate(self):
        """val (where the data set has one) and test; the model must be the same on all
        ranks (after checkpoint() or synchronize_model())."""
        scores = {}
        for split in ("val", "test") if self.data.val is not None else ("test",):
            loss, acc = evaluate(self.model, getattr(self.data, split), self.ctx,
                                 self.cfg.batch_size, self.device)
            scores.update({f"{split}_loss": loss, f"{split}_acc": acc})
        # epoch: the one it is in (mid-epoch) or the one just finished, as in "epoch" records.
        self.log.write("eval", epoch=self.epoch + int(self.step_in_epoch > 0), step=self.step,
                       **scores)
        return scores

    def evaluate_at_interval(self):
        """--eval-interval inside an epoch: scores the average of the ranks' models without
        changing what they train. The average goes into the model for the evaluation and the
        rank's own weights come back afterwards, so evaluating often does not add model
        averages that `local` or `dasgd` would not make (in-flight averages stay in flight)."""
        self.vote.drain()
        tensors = self.strategy.model_tensors
        own = [t.detach().clone() for t in tensors] if self.ctx.size > 1 else []
        self.strategy.blocking_average(tensors, name=f"{self.strategy.name}.eval_average")
        self.last_eval = self.evaluate()
        with torch.no_grad():
            for t, mine in zip(tensors, own):
                t.copy_(mine)
        job.root_print(self.ctx, f"step {self.step}: {scores_text(self.last_eval)}")

    def evaluate_and_log(self):
        self.last_eval = self.evaluate()
        meter, ctx = self.epoch_meter, self.ctx
        images_per_s = meter.samples * ctx.size / max(meter.seconds, 1e-9)
        self.log.write("epoch", epoch=self.epoch, step=self.step, train_loss=meter.loss,
                       train_acc=meter.acc, images_per_s=images_per_s,
                       comm_wait_s=self.strategy.comm_wait_s - self.epoch_comm_mark,
                       **self.last_eval)
        # Stopped inside an epoch (--max-steps): name the epoch it is in, not the last one done.
        epoch = f"{self.epoch}/{self.cfg.epochs}" if self.step_in_epoch == 0 else \
            f"{self.epoch + 1}/{self.cfg.epochs} ({self.step_in_epoch}/{self.steps_epoch} steps)"
        job.root_print(ctx, f"epoch {epoch} step {self.step}: "
                       f"train_loss={meter.loss:.4f} {scores_text(self.last_eval)} "
                       f"images/s={images_per_s:.0f}"
                        + (f" d={self.delay_change[0]}->{self.delay_change[1]}"
                           if self.delay_change else ""))

    def say_stopped(self):
        job.root_print(self.ctx, f"stopped by {self.stopped_by} at step {self.step}: "
                       f"checkpoint {self.ckpt_path}; continue with --resume")

    def summary(self):
        cfg, ctx = self.cfg, self.ctx
        return {**run_config(cfg, ctx), "global_batch": cfg.batch_size * ctx.size,
                "epochs": cfg.epochs, "epochs_done": self.epoch, "steps": self.step,
                "lr": self.peak_lr, "test_acc": self.last_eval.get("test_acc"),
                "test_loss": self.last_eval.get("test_loss"),
                "val_acc": self.last_eval.get("val_acc"),
                "val_loss": self.last_eval.get("val_loss"),
                "images_per_s": self.train_images / max(self.train_seconds, 1e-9),
                "step_s": self.train_seconds / max(self.step - self.start_step, 1),
                "comm_wait_s": self.strategy.comm_wait_s, "wall_s": None,
                "metrics": os.path.abspath(self.log.path),
                "checkpoint": os.path.abspath(self.ckpt_path) if self.ckpt_path else None,
                "hostname": socket.gethostname(), "launcher": ctx.launcher,
                "device": str(self.device), "stopped_by": self.stopped_by}


def train(cfg, ctx):
    """Runs the configured training on this rank; returns the summary (rank 0 writes it)."""
    trainer = Trainer(cfg, ctx)
    trainer.fit()
    return trainer.summary()
