"""Training metrics: a JSONL log written by rank 0, and simple running meters.

A write that fails (full disk, read-only file system) raises toolkit.outputs.WriteError,
one line naming the file and the cause, and never leaves a partial record or a temporary
file behind.
"""
import json
import os
import time

from toolkit.outputs import WriteError, append_line, write_atomic


class MetricsLog:
    """Appends one JSON object per line; a no-op on ranks other than 0.

    Appending (not truncating) lets a resumed run continue the same file.
    """

    def __init__(self, path, enabled):
        self.path = path
        self.enabled = enabled
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
