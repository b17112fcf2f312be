"""A launch that cannot stop cleanly is named at the start: `timeout` around mpirun."""
import signal

import pytest

from tests.fault_util import start
from toolkit.orphan_watch import timeout_signal


@pytest.mark.parametrize("argv, expected", [
    (["timeout", "3600", "mpirun"], (signal.SIGTERM, False)),
    (["/usr/bin/timeout", "-s", "USR1", "1h", "mpirun"], (signal.SIGUSR1, False)),
    (["timeout", "--signal=INT", "-k", "30", "1h", "mpirun"], (signal.SIGINT, False)),
    (["timeout", "-k5", "-sSIGHUP", "1h", "mpirun"], (signal.SIGHUP, False)),
    (["timeout", "-fs", "15", "1h", "mpirun"], (signal.SIGTERM, True)),
    (["timeout", "--fore", "--sig", "TERM", "1h", "mpirun"], (signal.SIGTERM, True)),
    (["timeout", "1h", "mpirun", "-s", "USR1"], (signal.SIGTERM, False)),  # mpirun's, not timeout's
    (["sleep", "1h"], None),
])
def test_the_signal_a_timeout_command_line_sends(argv, expected):
    assert timeout_signal(argv) == expected


@pytest.mark.mpi
def test_rank_0_warns_once_about_a_plain_timeout_around_mpirun(tmp_path):
    """(`timeout -s USR1` is checked for no warning by tests/test_faults_signals.py.)"""
    job = start("mpirun", 2, ("--norm", "bn", "--epochs", "1", "--out", tmp_path / "run"),
                prefix=("timeout", "3600"))
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "warning: `timeout`" in line]
    assert len(lines) == 1, stderr[-3000:]
    assert "SIGTERM to mpirun twice" in lines[0] and "timeout -s USR1" in lines[0], lines
