"""Training metrics: a JSONL log written by rank 0, and simple running meters.

A write that fails (full disk, read-only file system) raises toolkit.outputs.WriteError,
one line naming the file and the cause, and never leaves a partial record or a temporary
file behind.

With --tensorboard the same records also go to TensorBoard event files (TensorBoardLog):
every numeric field as the scalar `<kind>/<field>` at the record's step. The tensorboard
package is imported only then, so that this module (and toolkit.train) works without it.
"""
import importlib.util
import json
import os
import threading
import time

from toolkit.outputs import WriteError, append_line, write_atomic


class MetricsLog:
    """Appends one JSON object per line; a no-op on ranks other than 0.

    Appending (not truncating) lets a resumed run continue the same file.
    """

    def __init__(self, path, enabled, tensorboard=None):
        self.path = path
        self.enabled = enabled
        # A TensorBoardLog that receives every record after it is in the file (rank 0 only).
        self.tensorboard = tensorboard if enabled else None
        if enabled:
            directory = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise WriteError("metrics log", path, exc) from exc

    def write(self, kind, **fields):
        if not self.enabled:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **fields}
        append_line(self.path, json.dumps(record), what="metrics log")
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()


def tensorboard_installed():
    """Whether the tensorboard package is there, without importing it."""
    return importlib.util.find_spec("tensorboard") is not None


def load_summary_writer():
    """torch.utils.tensorboard.SummaryWriter; ImportError (one line) when the tensorboard
    package is missing or cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # a broken install fails in many ways (protobuf, numpy)
        text = str(exc).strip().splitlines()
        raise ImportError(text[0] if text else type(exc).__name__) from exc
    return SummaryWriter


class TensorBoardLog:
    """The scalars of metrics.jsonl as TensorBoard event files in `directory`.

    Each record's numeric fields become scalars tagged `<kind>/<field>` at the record's
    global step (its `step` field; `time` becomes the event's wall time). The writer is
    opened at the first record, so nothing is written before config.json. Every record is
    flushed before write() returns, so a failed write surfaces there as a WriteError, like
    one of metrics.jsonl. A resumed run writes a new event file with `purge_step` = the
    step after its checkpoint's, so TensorBoard drops what an earlier file logged after
    the checkpoint (steps the resumed run does again).
    """

    what = "TensorBoard events"
    _hook_lock = threading.Lock()
    _hook_installed = False

    def __init__(self, directory, writer_class, purge_step=None):
        self.directory = directory
        self.writer_class = writer_class
        self.purge_step = purge_step
        self.writer = None

    @property
    def path(self):
        """The event file being written (the directory before the first record)."""
        event_writer = getattr(getattr(self.writer, "file_writer", None), "event_writer", None)
        return getattr(event_writer, "_file_name", None) or self.directory

    def write(self, record):
        step = record.get("step")
        scalars = {f"{record['kind']}/{name}": value for name, value in record.items()
                   if name not in ("kind", "time", "step") and isinstance(value, (int, float))
                   and not isinstance(value, bool)}
        if not isinstance(step, int) or not scalars:
            return
        try:
            if self.writer is None:
                self._quiet_writer_threads()
                self.writer = self.writer_class(log_dir=self.directory,
                                                purge_step=self.purge_step)
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, global_step=step, walltime=record["time"])
            self.writer.flush()
        except Exception as exc:  # OSError, or one of tensorboard's own file errors
            raise WriteError(self.what, self.path, exc) from exc

    def close(self):
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception as exc:
                raise WriteError(self.what, self.path, exc) from exc

    @classmethod
    def _quiet_writer_threads(cls):
        """tensorboard writes from a thread, which prints a traceback when a write fails;
        the failure is raised again by the next flush and reported in one line from there."""
        with cls._hook_lock:
            if cls._hook_installed:
                return
            previous = threading.excepthook

            def hook(args):
                if type(args.thread).__module__.startswith("tensorboard."):
                    return
                previous(args)

            threading.excepthook = hook
            cls._hook_installed = True


class Meter:
    """Sums of loss, correct predictions, samples, steps and seconds over an interval."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.loss_sum = 0.0
        self.correct = 0
        self.samples = 0
        self.steps = 0
        self.seconds = 0.0

    def add(self, loss, correct, samples, seconds):
        self.loss_sum += loss * samples
        self.correct += correct
        self.samples += samples
        self.steps += 1
        self.seconds += seconds

    @property
    def loss(self):
        return self.loss_sum / max(self.samples, 1)

    @property
    def acc(self):
        return self.correct / max(self.samples, 1)


def write_json(path, obj):
    """Replace `path` by `obj` as indented JSON, atomically (WriteError on failure)."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode(), what=os.path.basename(path).split(".")[0])
