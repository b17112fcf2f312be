"""delay="auto": the ranks agree on d, a rate-limited link raises it, a resume keeps it.

Both jobs run tests/workers/dasgd_auto.py over TCP inside a private network namespace (as
launch.bench_comm does): once with the loopback unlimited, once limited by a token bucket
filter so that one average takes several emulated steps."""
import os

import pytest
import torch

from launch.bench_comm import SlowLoopback, job_env
from tests.mpi_util import can_make_namespace, py
from toolkit.mpi_policy import mpirun_argv
from toolkit.strategies.auto_delay import choose_delay

pytestmark = pytest.mark.mpi


def _job(out, rate):
    with SlowLoopback(f"tkauto{os.getpid()}") as net:
        if rate:
            net.limit(rate)
        proc = net.run(mpirun_argv(2, py("dasgd_auto.py", out), tcp=True), job_env(),
                       timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_choose_delay_is_the_smallest_sufficient_integer():
    assert choose_delay(0.3, 1.0) == 1
    assert choose_delay(1.0, 1.0) == 1
    assert choose_delay(1.01, 1.0) == 2
    assert choose_delay(2.5, 1.0) == 3
    assert choose_delay(50.0, 1.0) == 8  # bounded
    assert choose_delay(0.1, 1.0, (2, 4)) == 2


@pytest.mark.slow
def test_auto_delay_agrees_rises_on_a_slow_link_and_survives_resume(tmp_path):
    if not can_make_namespace():
        pytest.skip("`ip netns add` failed: the test needs root and iproute2")
    fast = _job(tmp_path / "fast", None)
    # 2 ranks x 4 MB over 400 Mbit/s: about 0.16 s per average, ~3 steps of 0.05 s
    slow = _job(tmp_path / "slow", "400mbit")
    for ranks in (fast, slow):
        first, second = ranks
        assert first["first_delay"] == second["first_delay"]
        assert first["log"] == second["log"]  # one decision, broadcast to all
        assert first["after_recheck"] == second["after_recheck"]
        for r in ranks:
            assert r["resumed_delay"] == r["first_delay"]
            assert r["resumed_decisions"] == len(r["log"]) - 1  # the re-check came later
            assert torch.equal(r["resumed"], r["uninterrupted"])
    assert slow[0]["first_delay"] >= 2
    assert slow[0]["first_delay"] > fast[0]["first_delay"], (fast[0]["log"], slow[0]["log"])
