"""A checkpoint cannot run code: --resume reads it with torch's restricted unpickler; files
written by earlier versions of the toolkit still resume, bit for bit."""
import os

import pytest
import torch

from tests.mpi_util import REPO
from tests.train_util import summary, train_single
from toolkit.checkpoint import CheckpointError, load_checkpoint

# Written by `launch.train` before checkpoints were read with weights_only=True (same
# format_version); the run that wrote it: ARGS below with --stop-after-epochs 1.
PREVIOUS = os.path.join(REPO, "tests", "data", "ckpt-previous-version.pt")
ARGS = ["--norm", "inv", "--strategy", "none", "--epochs", "2", "--seed", "3"]


class _Payload:
    """Pickles as a call of os.system: what a crafted checkpoint would carry."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _malicious(path, marker):
    torch.save({"format_version": 1, "config": {}, "model": _Payload(f"touch {marker}")},
               path)


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "marker"
    _malicious(evil, marker)
    with pytest.raises(CheckpointError, match=r"evil\.pt is refused: it needs \S*system"):
        load_checkpoint(str(evil), expect={})
    proc = train_single(*ARGS, "--resume", evil, "--out", tmp_path / "run", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "evil.pt" in lines[0] and "system" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_checkpoint_of_the_previous_version_resumes_bit_exact(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    first = train_single(*ARGS, "--out", straight)
    assert first.returncode == 0, first.stderr
    second = train_single(*ARGS, "--out", resumed, "--resume", PREVIOUS)
    assert second.returncode == 0, second.stderr
    a = torch.load(summary(straight)["checkpoint"], weights_only=True)["model"]
    b = torch.load(summary(resumed)["checkpoint"], weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
