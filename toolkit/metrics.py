"""Training metrics: a JSONL log written by rank 0, and simple running meters."""
import json
import os
import time


class MetricsLog:
    """Appends one JSON object per line; a no-op on ranks other than 0.

    Appending (not truncating) lets a resumed run continue the same file.
    """

    def __init__(self, path, enabled):
        self.path = path
        self.enabled = enabled
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, kind, **fields):
        if not self.enabled:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


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
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
