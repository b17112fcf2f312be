"""Bad input and faults: one clear error line, exit code 2 (3 for divergence), nothing lost."""
import hashlib
import os
import signal
import subprocess
import time

import pytest
import torch

from tests.fault_util import wait_for
from tests.mpi_util import REPO
from tests.train_util import summary, train_argv, train_ranks, train_single
from toolkit.mpi_policy import launcher_env, mpirun_argv


def _one_error_line(proc):
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("args, expected", [
    (["--model", "resnet1000"], "resnet1000"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--dataset", "mnist-ish"], "mnist-ish"),
    (["--batch-size", "5000"], "--batch-size 5000"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "inf"], "--lr"),
    pytest.param(["--device", "cuda"], "--device cuda: no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, expected):
    proc = train_single("--epochs", "1", "--norm", "bn", "--strategy", "none",
                        "--out", tmp_path / "run", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in _one_error_line(proc)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A finished 1-epoch run of a 3-epoch schedule, to resume from."""
    out = tmp_path_factory.mktemp("faults") / "run"
    proc = train_single("--epochs", "3", "--stop-after-epochs", "1", "--norm", "bn",
                        "--strategy", "none", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = sorted((out / "checkpoints").iterdir())
    assert len(ckpts) == 1
    return out, ckpts[0]


def test_existing_run_is_not_overwritten_without_resume(one_epoch_run):
    out, ckpt = one_epoch_run
    before = _digest(ckpt)
    proc = train_single("--epochs", "3", "--norm", "bn", "--strategy", "none", "--out", out)
    assert proc.returncode == 2 and "--resume" in _one_error_line(proc)
    assert _digest(ckpt) == before


def test_mismatched_checkpoint_is_refused(one_epoch_run):
    out, ckpt = one_epoch_run
    before = _digest(ckpt)
    proc = train_single("--epochs", "3", "--norm", "none", "--strategy", "none", "--out", out,
                        "--resume")
    assert proc.returncode == 2
    assert "norm='bn' there, 'none' here" in _one_error_line(proc)
    assert _digest(ckpt) == before


def test_corrupt_checkpoint_is_refused(one_epoch_run, tmp_path):
    _, ckpt = one_epoch_run
    bad = tmp_path / "ckpt-00000044.pt"
    bad.write_bytes(open(ckpt, "rb").read()[:300])
    proc = train_single("--epochs", "3", "--norm", "bn", "--strategy", "none",
                        "--out", tmp_path / "other", "--resume", bad)
    assert proc.returncode == 2 and "corrupt" in _one_error_line(proc)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(one_epoch_run):
    out, ckpt = one_epoch_run
    before = _digest(ckpt)
    proc = train_single("--epochs", "3", "--norm", "bn", "--strategy", "none", "--out", out,
                        "--resume", "--lr", "1e30", "--lr-scaling", "none")
    assert proc.returncode == 3, proc.stderr[-2000:]
    line = _one_error_line(proc)
    assert "at step" in line and str(ckpt) in line
    assert _digest(ckpt) == before
    torch.load(ckpt, weights_only=True)


def _rank_pids(job):
    """The training ranks mpirun started (its python children)."""
    import psutil
    return [p.pid for p in psutil.Process(job.pid).children(recursive=True)
            if "launch.train" in " ".join(p.cmdline())]


def _start_long_run(out):
    args = train_argv("--epochs", "200", "--norm", "bn", "--strategy", "dasgd",
                      "--checkpoint-interval", "5", "--out", out)
    return subprocess.Popen(mpirun_argv(2, args), cwd=REPO,
                            env=launcher_env({"PYTHONPATH": REPO}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.mpi
def test_kill_9_one_rank_ends_the_job_and_the_checkpoint_resumes(tmp_path):
    out = tmp_path / "killed"
    job = _start_long_run(out)
    try:
        assert wait_for(lambda: len(list((out / "checkpoints").glob("ckpt-*.pt"))) >= 2, 120)
        pids = _rank_pids(job)
        assert len(pids) == 2, pids
        os.kill(pids[1], signal.SIGKILL)
        start = time.time()
        job.wait(timeout=60)
        assert time.time() - start < 60
        assert job.returncode != 0
    finally:
        if job.poll() is None:
            job.kill()
    ckpt = sorted((out / "checkpoints").glob("ckpt-*.pt"))[-1]
    step = torch.load(ckpt, weights_only=True)["step"]
    train_ranks(2, "--epochs", "200", "--norm", "bn", "--strategy", "dasgd",
                "--checkpoint-interval", "5", "--out", out, "--resume",
                "--max-steps", step + 10)
    assert summary(out)["steps"] == step + 10


@pytest.mark.mpi
@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGTERM"])
def test_preemption_signal_checkpoints_and_exits_cleanly(tmp_path, signame):
    """SIGUSR1 through mpirun (which forwards it to every rank, as `sbatch --signal` does),
    SIGTERM straight to every rank (what SLURM sends all tasks at the time limit)."""
    out = tmp_path / "preempted"
    job = _start_long_run(out)
    try:
        assert wait_for(lambda: len(list((out / "checkpoints").glob("ckpt-*.pt"))) >= 1, 120)
        if signame == "SIGUSR1":
            job.send_signal(signal.SIGUSR1)
        else:
            for pid in _rank_pids(job):
                os.kill(pid, signal.SIGTERM)
        stdout, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, stderr[-3000:]
    assert f"stopped by {signame}" in stdout
    ckpt = sorted((out / "checkpoints").glob("ckpt-*.pt"))[-1]
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == summary(out)["steps"]


def test_out_that_is_a_file_exits_2_and_leaves_the_file_alone(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    proc = train_single("--epochs", "1", "--norm", "bn", "--strategy", "none", "--out", target)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "exists and is not a directory" in _one_error_line(proc)
    assert target.read_text() == "keep me\n"


def test_resuming_an_older_checkpoint_never_deletes_newer_ones(tmp_path):
    """An explicit older --resume in a directory with newer checkpoints is refused (it
    would mix two runs); and pruning never removes checkpoints newer than the one saved."""
    out = tmp_path / "run"
    proc = train_single("--epochs", "2", "--norm", "bn", "--strategy", "none", "--out", out,
                        "--keep", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = sorted((out / "checkpoints").glob("ckpt-*.pt"))
    digests = {p: _digest(p) for p in (first, second)}
    proc = train_single("--epochs", "2", "--norm", "bn", "--strategy", "none", "--out", out,
                        "--resume", first, "--keep", "1")
    assert proc.returncode == 2 and "is newer" in _one_error_line(proc)
    assert {p: _digest(p) for p in (first, second)} == digests

    from toolkit.checkpoint import Checkpointer
    ckpts = Checkpointer(str(out / "checkpoints"), keep=1)
    written = ckpts.save({"step": 1}, 1)  # older than both: only itself is kept up to step 1
    assert os.path.exists(written) and first.exists() and second.exists()


def test_debug_shows_the_traceback_before_the_one_line(tmp_path):
    proc = train_single("--epochs", "1", "--norm", "bn", "--strategy", "none", "--debug",
                        "--dataset", "cifar10", "--data-dir", tmp_path / "missing",
                        "--out", tmp_path / "run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert str(tmp_path / "missing") in _one_error_line(proc)
