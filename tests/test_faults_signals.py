"""Stopping the launcher stops the job cleanly: the ranks agree on a step, write one
checkpoint of it, exit, and no process is left (docs/faults.md says what to signal).

Each case is a real 2-rank job of the small CNN on digits, signalled once it is training.
"""
import json
import os
import re
import signal
import time

import pytest

from tests.fault_util import (LONG, Seen, assert_intact, assert_no_traceback, checkpoints,
                              error_lines, finish, no_temporary_files, start, training, wait_for)

# `load`: `make test` runs these under a background load (docs/faults.md, Under load).
pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.load]

STOPPED = re.compile(r"stopped by (.+) at step (\d+): checkpoint (\S+);")


# What rank 0 reports: its own reason, or the one the vote carried from a quicker rank.
HOROVODRUN_GONE = ("the exit of horovodrun", "the exit of another rank's launcher")
ENDING = ("the launcher ending the job (SIGCONT)", "a signal on another rank")
SIGNALLED = ("SIGTERM",) + ENDING


def assert_clean_stop(out, stdout, stderr, reasons):
    """One stop at one step, its checkpoint written and loadable, no error, no traceback."""
    assert (out / "summary.json").is_file(), "no summary.json\n" + stdout[-3000:] + stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    step, by = summary["steps"], summary["stopped_by"]
    assert by is not None and any(r in by for r in reasons), by
    stops = STOPPED.findall(stdout)
    assert len(stops) == 1, stdout[-3000:] + stderr[-3000:]
    assert stops[0][0] == by and int(stops[0][1]) == step, stops
    assert error_lines(stderr) == [], stderr[-3000:]
    assert_no_traceback(stdout, stderr)
    newest = checkpoints(out)[-1]
    assert newest.name == f"ckpt-{step:08d}.pt" and assert_intact(newest)["step"] == step
    return step


def run_and_signal(tmp_path, launcher, sig, *, prefix=(), group=False):
    """Start, wait for the training, send `sig` to the launcher (group: to the launcher's
    process group, as Ctrl-C in a terminal does), wait for the end."""
    out = tmp_path / "run"
    job = start(launcher, 2, (*LONG, "--strategy", "dasgd", "--out", out), prefix=prefix)
    seen = Seen(job)
    try:
        training(job, out)
        if group:
            os.killpg(job.pid, sig)
        else:
            job.send_signal(sig)
        signalled = time.time()
        stdout, stderr, _ = finish(job, seen, timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    return out, job.returncode, stdout, stderr, time.time() - signalled


@pytest.mark.parametrize("case, sig", [("term-horovodrun", signal.SIGTERM),
                                       ("int-horovodrun", signal.SIGINT)])
def test_signal_to_horovodrun(tmp_path, case, sig):
    """horovodrun is `/bin/sh -c mpirun ...` by then. SIGTERM ends that shell while mpirun
    lives on; the ranks notice that horovodrun is gone. SIGINT is Ctrl-C, which reaches the
    shell and mpirun (the shell alone would ignore it): mpirun starts ending the job. Once
    mpirun is gone the shell usually dies of the SIGINT it deferred, and sometimes exits with
    mpirun's 1 instead (seen in CI): either way the stop is clean."""
    out, code, stdout, stderr, _ = run_and_signal(tmp_path, "horovodrun", sig,
                                                  group=sig == signal.SIGINT)
    assert_clean_stop(out, stdout, stderr, HOROVODRUN_GONE + ENDING)
    assert code in ((-sig, 1) if sig == signal.SIGINT else (-sig,)), (code, stderr[-3000:])


@pytest.mark.parametrize("case, sig", [("term-mpirun", signal.SIGTERM),
                                       ("int-mpirun", signal.SIGINT),
                                       ("usr1-mpirun", signal.SIGUSR1)])
def test_signal_to_mpirun(tmp_path, case, sig):
    """mpirun forwards SIGUSR1 at once; on SIGTERM/SIGINT it sends SIGCONT at once (the
    ranks take it as the stop request) and SIGTERM after odls_base_sigkill_timeout (10 s
    by the toolkit's policy), SIGKILL as long after that."""
    out, code, stdout, stderr, _ = run_and_signal(tmp_path, "mpirun", sig)
    # mpirun exits 1 once it was told to end the job, even when every rank exits 0.
    assert code == (0 if sig == signal.SIGUSR1 else 1), (code, stderr[-3000:])
    expected = ("SIGUSR1", "a signal on another rank") if sig == signal.SIGUSR1 else SIGNALLED
    assert_clean_stop(out, stdout, stderr, expected)


@pytest.mark.parametrize("case, launcher, sig, reason", [
    ("timeout-horovodrun", "horovodrun", "TERM", HOROVODRUN_GONE + SIGNALLED),
    ("timeout-mpirun", "mpirun", "USR1", ("SIGUSR1", "a signal on another rank"))])
def test_timeout_around_the_launcher(tmp_path, case, launcher, sig, reason):
    """`timeout -s SIG DURATION launcher ...`: its SIGALRM is what expiry is, so the test
    raises it once the ranks train; timeout signals the launcher, then the launcher's whole
    process group, and exits 124. mpirun gets SIGUSR1 (docs/faults.md: two SIGTERMs within
    5 s make mpirun exit at once)."""
    out, returncode, stdout, stderr, _ = run_and_signal(
        tmp_path, launcher, signal.SIGALRM, prefix=("timeout", "-s", sig, "3600"))
    assert returncode == 124, (returncode, stderr[-3000:])
    assert_clean_stop(out, stdout, stderr, reason)
    assert "warning: `timeout`" not in stderr  # this form stops cleanly


@pytest.mark.parametrize("case", ["kill-mpirun"])
def test_no_rank_outlives_a_killed_mpirun(tmp_path, case):
    """Open MPI's ranks abort once their daemon is gone (before the orphan watch could
    ask for a stop): nothing keeps running, and the last checkpoint is whole."""
    out, code, stdout, stderr, seconds = run_and_signal(tmp_path, "mpirun", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert_intact(checkpoints(out)[-1])
    assert no_temporary_files(out) == []


@pytest.mark.parametrize("case", ["late-usr1"])
def test_a_stop_warning_after_the_run_finished_is_harmless(tmp_path, case):
    """A scheduler's warning (SIGUSR1) that arrives once summary.json is written, while the
    process shuts down, must not turn the finished run into "killed by SIGUSR1"."""
    out = tmp_path / "run"
    job = start("none", 1, ("--norm", "bn", "--strategy", "none", "--epochs", "1",
                            "--workers", "0", "--out", out))
    try:
        assert wait_for(lambda: (out / "summary.json").exists() or job.poll() is not None, 120)
        sent = 0
        while job.poll() is None:  # a signal every millisecond until the process is gone
            try:
                job.send_signal(signal.SIGUSR1)
            except ProcessLookupError:
                break
            sent += 1
            time.sleep(0.001)
        stdout, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert sent > 0
    assert job.returncode == 0, (job.returncode, stderr[-3000:])
    assert "final: test_acc=" in stdout and "stopped by" not in stdout
    assert_no_traceback(stdout, stderr)
