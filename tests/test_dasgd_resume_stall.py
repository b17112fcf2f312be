"""DaSGD checkpoint/resume in the middle of a round, and stalls that must end the job."""
import os
import re
import signal
import subprocess
import time

import pytest
import torch

from tests.fault_util import Lines, job_env, wait_for
from tests.mpi_util import REPO, py, run_ranks
from toolkit.mpi_policy import horovodrun_argv, mpirun_argv

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


# Not anchored to a line: mpirun forwards the ranks' writes as they come, so two ranks' lines
# can arrive glued together.
STEP_LINE = re.compile(r"rank (\d+) step (\d+) at (\d+\.\d{3})")
FAILED_LINE = re.compile(r"rank (\d+) failed at (\d+\.\d{3})")
TIMEOUT_S = 5
# Only a guard against a start-up that never ends (imports, Horovod's start): the stall
# itself is timed from the ranks' own lines.
STARTUP_GUARD_S = 120


def step_times(stdout):
    """{rank: {step: time.time() when the rank began it}} from the worker's lines."""
    times = {}
    for rank, step, at in STEP_LINE.findall(stdout):
        times.setdefault(int(rank), {})[int(step)] = float(at)
    return times


def start_stall_job(mode, strategy, launcher):
    argv = py("dasgd_stall.py", mode, strategy)
    cmd = mpirun_argv(2, argv) if launcher == "mpirun" else horovodrun_argv(2, argv, gloo=True)
    env = job_env({"TOOLKIT_COMM_TIMEOUT_S": str(TIMEOUT_S)})
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True), env


@pytest.mark.parametrize("mode,strategy,launcher", [
    ("skip", "dasgd", "mpirun"), ("skip", "sync", "mpirun"),
    ("skip", "dasgd", "horovodrun-gloo"), ("die", "dasgd", "mpirun")])
def test_stall_ends_the_job_with_an_error_naming_the_step(mode, strategy, launcher):
    """The stall at step 3 ends the job: the waiting ranks fail once the deadline has passed,
    naming the step, and the job is gone within the deadline, the launcher's kill sequence
    (SIGTERM, then SIGKILL, odls_base_sigkill_timeout apart) and as long again as this run's
    ranks took to start (a loaded machine is slower at starting and ending processes alike).
    Timed from the ranks' own step lines, so a slow start-up is not counted as the stall's."""
    job, env = start_stall_job(mode, strategy, launcher)
    lines = Lines(job)
    launched = time.time()
    try:
        assert wait_for(lambda: len(step_times(lines.text("stdout"))) == 2 or
                        job.poll() is not None, STARTUP_GUARD_S, interval=0.05), \
            f"the ranks did not start within {STARTUP_GUARD_S} s"
        startup_s = time.time() - launched
        sigkill_s = float(env.get("OMPI_MCA_odls_base_sigkill_timeout", 1))
        budget = TIMEOUT_S + 2 * sigkill_s + startup_s
        ended = wait_for(lambda: job.poll() is not None, budget, interval=0.05)
        ended_at = time.time()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    stdout, stderr = lines.close()
    output = stdout + stderr
    times = step_times(stdout)
    assert job.returncode != 0, output[-3000:]
    assert "finished without noticing" not in output
    assert sorted(times) == [0, 1] and all(3 in t for t in times.values()), output[-3000:]
    stall = max(t[3] for t in times.values())  # the last rank reached the stall point
    assert ended and ended_at - stall <= budget, \
        (f"the job ended {ended_at - stall:.1f} s after the stall (budget {budget:.1f} s: "
         f"{TIMEOUT_S} s deadline, 2 x {sigkill_s:g} s kill sequence, {startup_s:.1f} s "
         f"start-up)\n{output[-3000:]}")
    if mode == "skip":
        assert "stalled at step" in output, output[-3000:]
        assert "CommunicationError: collective" in output
        failed = {int(r): float(at) for r, at in FAILED_LINE.findall(stdout)}
        assert failed, output[-3000:]
        for rank, at in failed.items():  # the deadline fired, not an earlier error
            assert at - max(times[rank].values()) >= TIMEOUT_S, (rank, at, times[rank])
