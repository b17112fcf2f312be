"""Smoke test of the communication benchmark's real code path (namespace, tbf, mpirun over
TCP, every strategy) with a tiny model and 2 timed steps each. Ratios are not asserted here:
speed is measured by `python -m launch.bench_comm`, not by tests."""
import json
import os
import subprocess
import sys

import pytest

from tests.mpi_util import REPO, can_make_namespace

pytestmark = pytest.mark.mpi


def test_bench_comm_smoke(tmp_path):
    if not can_make_namespace():
        pytest.skip("`ip netns add` failed: the benchmark needs root and iproute2")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.bench_comm", "--json", str(out), "--model", "small_cnn",
         "--image-size", "8", "--batch-size", "4", "--rounds", "2", "--block-steps", "3",
         "--rate", "200mbit", "--transports", "mpi", "--allow-loaded"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["rate"] == "200mbit"
    assert set(report["step_s"]) == {"none", "sync", "local", "dasgd", "ddp", "postlocal"}
    assert all(v > 0 for v in report["step_s"].values())
    for key in ("dasgd_over_none", "sync_over_none", "ddp_over_none", "postlocal_over_none",
                "dasgd_over_fastest_peer", "hidden_fraction"):
        assert key in report
    assert report["ddp_over_none"] == pytest.approx(
        report["step_s"]["ddp"] / report["step_s"]["none"])
    assert report["dasgd_over_fastest_peer"] == pytest.approx(report["step_s"]["dasgd"] / min(
        report["step_s"][n] for n in ("sync", "local", "ddp", "postlocal")))
    assert report["dasgd_over_none"] == pytest.approx(
        report["step_s"]["dasgd"] / report["step_s"]["none"])
    # Per-round times (slowest rank) for every strategy, and the ratios paired by round.
    entry = report["by_transport"]["mpi"]
    assert all(len(v) == 2 and min(v) > 0 for v in entry["round_step_s"].values())
    # CPU per step split into compute and communication threads, for every strategy.
    cpu = entry["cpu_s_per_step"]
    assert set(cpu) == set(report["step_s"])
    # (the smoke run's steps are milliseconds, below /proc's clock-tick resolution)
    assert all(v["compute"] >= 0 and v["comm"] >= 0 for v in cpu.values())
    assert "communication threads" in proc.stdout
    # Allreduces timed at several sizes (for the latency/bandwidth fit of the projection).
    sizes = entry["allreduce_sizes"]
    assert len(sizes) >= 3 and len({p["bytes"] for p in sizes}) == len(sizes)
    assert all(p["seconds"] > 0 and p["workers"] == 2 for p in sizes)
    assert set(entry["per_round_ratios"]) >= {"ddp_over_none", "postlocal_over_none"}
    spread = entry["per_round_ratios"]["dasgd_over_none"]
    assert spread["rounds"] == 2 and spread["q1"] <= spread["median"] <= spread["q3"]
    # The dasgd run wrote a Horovod timeline that shows its named averages.
    timeline = report["by_transport"]["mpi"]["timeline"]
    assert os.path.exists(timeline)
    with open(timeline) as f:
        assert "dasgd.avg" in f.read()
    # The namespace is gone.
    line = next(l for l in proc.stdout.splitlines() if "private namespace" in l)
    namespace = line.split("private namespace ")[1].split(",")[0]
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert namespace.startswith("tkbench") and namespace not in names.split()


def test_bench_comm_rejects_bad_rate(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launch.bench_comm", "--json",
                           str(tmp_path / "x.json"), "--rate", "fast"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--rate must look like 800mbit" in proc.stderr


def test_round_ratio_spread_pairs_turns_of_the_same_round():
    from experiments.bench.comm import round_ratio_spread
    rounds = {"none": [1.0, 2.0, 1.0, 4.0], "dasgd": [1.1, 2.2, 1.1, 4.4], "sync": [2.0] * 4}
    spread = round_ratio_spread(rounds)
    # the load changed 4x between rounds, the paired ratio did not
    assert spread["dasgd_over_none"]["median"] == pytest.approx(1.1)
    assert spread["dasgd_over_none"]["q1"] == pytest.approx(1.1)
    assert spread["dasgd_over_none"]["q3"] == pytest.approx(1.1)
    assert spread["dasgd_over_none"]["rounds"] == 4
    assert spread["sync_over_none"]["median"] == pytest.approx(1.5)
    assert "local_over_none" not in spread


def test_cpu_split_charges_the_listed_threads_to_communication():
    import threading
    import time

    from experiments.bench.comm import CpuSplit

    def spin(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    started, spun, release = threading.Event(), threading.Event(), threading.Event()
    # the thread stays alive until measured: a finished thread leaves /proc
    worker = threading.Thread(target=lambda: (started.wait(), spin(0.3), spun.set(),
                                              release.wait()))
    worker.start()
    split = CpuSplit({str(worker.native_id)})
    split.start()
    started.set()
    spin(0.2)  # this (compute) thread works too
    spun.wait()
    split.stop()
    release.set()
    worker.join()
    assert split.comm_s == pytest.approx(0.3, abs=0.05)
    assert split.compute_s == pytest.approx(0.2, abs=0.05)


def test_give_communication_a_core_pins_compute_and_communication_apart():
    import threading

    from experiments.bench.comm import give_communication_a_core

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs 2 CPUs")
    cpu = max(allowed)
    release = threading.Event()
    comm = threading.Thread(target=release.wait)
    comm.start()
    seen = {}

    def compute():  # a thread of its own, so that pytest's thread keeps its affinity
        give_communication_a_core(cpu, {str(comm.native_id)})
        seen["compute"] = os.sched_getaffinity(0)
        seen["comm"] = os.sched_getaffinity(comm.native_id)

    worker = threading.Thread(target=compute)
    worker.start()
    worker.join()
    release.set()
    comm.join()
    assert seen == {"compute": allowed - {cpu}, "comm": {cpu}}
    with pytest.raises(ValueError, match="--comm-cpu 99999"):
        give_communication_a_core(99999, set())
