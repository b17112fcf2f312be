"""DaSGD checkpoint/resume in the middle of a round, and stalls that must end the job."""
import os
import time

import pytest
import torch

from tests.mpi_util import py, run_ranks

pytestmark = pytest.mark.mpi


def test_resume_mid_round_equals_uninterrupted_run(tmp_path):
    for mode in ("full", "first", "resume"):
        run_ranks(2, py("dasgd_ckpt.py", mode, tmp_path), timeout=180)
    assert os.path.exists(tmp_path / "ckpt.pt")
    for rank in range(2):
        full = torch.load(tmp_path / "full" / f"rank{rank}.pt")
        resumed = torch.load(tmp_path / "resume" / f"rank{rank}.pt")
        assert full["step"] == resumed["step"] == 14
        assert full["rounds"] == resumed["rounds"] == 3
        assert full["in_flight"] == 1  # the run ends with the step-14 round still travelling
        # Parameters, BN statistics and momentum, bit for bit.
        assert torch.equal(full["state"], resumed["state"]), rank


@pytest.mark.parametrize("mode,strategy,launcher", [
    ("skip", "dasgd", "mpirun"), ("skip", "sync", "mpirun"),
    ("skip", "dasgd", "horovodrun-gloo"), ("die", "dasgd", "mpirun")])
def test_stall_ends_the_job_with_an_error_naming_the_step(mode, strategy, launcher):
    start = time.monotonic()
    proc = run_ranks(2, py("dasgd_stall.py", mode, strategy), launcher=launcher,
                     timeout=120, check=False, env={"TOOLKIT_COMM_TIMEOUT_S": "5"})
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "finished without noticing" not in output
    # Bounded: the 5 s deadline plus start-up and shutdown, far from a hang.
    assert elapsed < 60, elapsed
    if mode == "skip":
        assert "stalled at step" in output, output[-3000:]
        assert "CommunicationError: collective" in output
