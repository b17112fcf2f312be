"""Checkpoints: atomic writes, the last K kept, clear errors on corrupt or foreign files.

A checkpoint is written to a temporary file in the same directory, fsynced, and renamed
over its final name, then the directory is fsynced: a crash or a full disk at any moment
leaves either the old set of checkpoints or the new one, never a torn or temporary file
(toolkit/outputs.py). Files get mode 0666 minus the umask, so a group can resume a shared run.

Checkpoints travel between people and shared file systems, so loading one must never run
code: they are read with torch's restricted unpickler (`weights_only=True`), which builds
only containers, strings, numbers, None and tensors. A checkpoint holds nothing else (keep
it so: the state dicts of the model, the strategy and the loss scale, the RNG state, the
configuration). A file that asks for any other global is refused in one line naming it.
"""
import io
import os
import pickle
import re

import torch

from toolkit.outputs import WriteError, write_atomic

PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message is one line naming the file."""


def save_atomic(obj, path):
    """Serialise `obj` in memory, then write it with toolkit.outputs.write_atomic: a full
    disk or any other write failure raises WriteError (one line naming the file and the
    cause) and leaves the existing checkpoints and no temporary file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getbuffer(), what="checkpoint")


class Checkpointer:
    """ckpt-<step>.pt files in one directory; keeps the newest `keep`."""

    def __init__(self, directory, keep=3):
        if keep < 1:
            raise ValueError(f"--keep must be >= 1, got {keep}")
        self.directory = directory
        self.keep = keep

    def paths(self):
        """Existing checkpoints, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        names = sorted(n for n in os.listdir(self.directory) if PATTERN.match(n))
        return [os.path.join(self.directory, n) for n in names]

    def latest(self):
        paths = self.paths()
        return paths[-1] if paths else None

    @staticmethod
    def step_of(path):
        return int(PATTERN.match(os.path.basename(path)).group(1))

    def save(self, state, step):
        path = os.path.join(self.directory, f"ckpt-{step:08d}.pt")
        save_atomic(dict(state, format_version=FORMAT_VERSION), path)
        # Only checkpoints up to this step are pruned: a newer file is never deleted here.
        upto = [p for p in self.paths() if self.step_of(p) <= step]
        for old in upto[:-self.keep]:
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise WriteError("old checkpoint", old, exc, action="remove") from exc
        return path


# torch words the refusal in several ways, all naming the global after "GLOBAL".
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_REFUSED_OTHER = re.compile(r"WeightsUnpickler error: ([^\n]+)")


def read_restricted(path, what="checkpoint"):
    """The object in a torch.save file, built by the restricted unpickler (no code runs).
    A file that needs another global, or is damaged, raises CheckpointError (one line)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        refused = _REFUSED_GLOBAL.search(text) or _REFUSED_OTHER.search(text)
        if refused:
            raise CheckpointError(f"{what} {path} is refused: it needs {refused.group(1)}, "
                                  f"which a checkpoint never holds (loading it could run "
                                  f"code); nothing was executed") from None
        raise CheckpointError(f"{what} {path} is corrupt or not a checkpoint "
                              f"(UnpicklingError)") from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"{what} {path} is corrupt or not a checkpoint "
                              f"({type(exc).__name__})") from None


def load_checkpoint(path, expect, defaults=None):
    """Load `path` and check it belongs to this run: `expect` maps keys of the saved
    `config` to the values this run has (model, norm, dataset, world size, ...). A key that
    an older version did not record matches when this run keeps its default (`defaults`):
    that version behaved as the default does."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    state = read_restricted(path)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a toolkit checkpoint "
                              f"(format version {FORMAT_VERSION} expected)")
    saved = state.get("config", {})
    defaults = defaults or {}
    for key, value in expect.items():
        if key not in saved and key in defaults and value == defaults[key]:
            continue
        if key not in saved and key in defaults:
            raise CheckpointError(f"checkpoint {path} does not match this run: it has no "
                                  f"{key} (written before the option existed, it ran as "
                                  f"{defaults[key]!r}), {value!r} here")
        if saved.get(key) != value:
            raise CheckpointError(f"checkpoint {path} does not match this run: "
                                  f"{key}={saved.get(key)!r} there, {value!r} here")
    return state
