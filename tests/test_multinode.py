"""Ranks on several nodes, on an emulated cluster of 2 nodes on this machine (root).

Each node is a network namespace with its own hostname, address, rate-limited link, sshd
and slurmd (tests/emulated_cluster.py); the launchers start on node1 and reach node2 over
ssh or through SLURM, as on a real cluster. The file system is shared, like a cluster's
home directory. The nodes share this machine's cores: 4 ranks on 2 cores, so the jobs use
the small digits model for a few steps with one thread per rank.

These tests take a few minutes and run with `make test-multinode` (pytest -m multinode);
a plain `pytest tests` skips them.
"""
import collections
import json
import os
import re
import subprocess
import sys

import pytest

from tests.emulated_cluster import EmulatedCluster
from experiments.emulation.jobs import horovodrun_nodes_argv, mpirun_nodes_argv, write_hostfile
from experiments.emulation.network import NODE_IFACE
from toolkit.mpi_policy import python_module
from toolkit.scaling.slurm_jobs import submit, wait_for_jobs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "workers", "multinode_ranks.py")
TRAIN = ["--model", "small_cnn", "--norm", "bn", "--dataset", "digits", "--epochs", "1",
         "--batch-size", "16", "--log-interval", "4", "--threads", "1"]
TWO_BY_TWO = {"node1": 2, "node2": 2}
JOB_TIMEOUT = 400

pytestmark = [pytest.mark.multinode, pytest.mark.slow]


def skip_unless_selected(request):
    """Only with -m multinode (make test-multinode): minutes of work, root, namespaces."""
    expr = request.config.option.markexpr or ""
    if "multinode" not in expr or "not multinode" in expr:
        pytest.skip("emulated multi-node cluster: run with `make test-multinode` "
                    "(pytest -m multinode tests/test_multinode.py)")
    if os.geteuid() != 0:
        pytest.skip("network namespaces, sshd and slurmd need root")


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    skip_unless_selected(request)
    c = EmulatedCluster(str(tmp_path_factory.mktemp("cluster")), nodes=2, rate="1gbit")
    c.extra_env["TOOLKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("toolkit-cache"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def run_ok(cluster, argv, env=None, node="node1"):
    proc = cluster.run_on(node, argv, env=env, timeout=JOB_TIMEOUT)
    assert proc.returncode == 0, (f"{' '.join(argv)} on {node} exited {proc.returncode}\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def final_line(output):
    lines = [line for line in output.splitlines() if re.search(r"final: test_acc=", line)]
    assert lines, f"no final line in\n{output[-3000:]}"
    return lines[-1]


def ranks_report(output):
    line = next((x for x in output.splitlines() if "ranks: " in x), None)
    assert line, f"no ranks report in\n{output[-3000:]}"
    # horovodrun tags lines by rank, and another rank's tag can land on the same line
    # (`...}[1,0]<stdout>:`): read the one JSON object and ignore what follows it.
    return json.JSONDecoder().raw_decode(line.split("ranks: ", 1)[1])[0]


def check_placement(report, slots):
    """Ranks sit on the nodes the launcher was asked for, numbered per node."""
    ranks = report["ranks"]
    size = sum(slots.values())
    assert sorted(r["rank"] for r in ranks) == list(range(size))
    by_host = collections.defaultdict(list)
    for r in ranks:
        by_host[r["host"]].append(r)
    assert {h: len(rs) for h, rs in by_host.items()} == slots
    for host, rs in by_host.items():
        assert sorted(r["local_rank"] for r in rs) == list(range(slots[host])), host
        assert {r["local_size"] for r in rs} == {slots[host]}, host
        assert {r["cross_size"] for r in rs} == {len(slots)}, host
    # The sum of 1..size reached every element on every node.
    assert report["sum_min"] == report["sum_max"] == size * (size + 1) / 2


def processes_mentioning(text):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def summary(out_dir):
    with open(os.path.join(out_dir, "summary.json")) as f:
        return json.load(f)


def test_nodes_have_own_names_and_links(cluster):
    out = run_ok(cluster, ["sh", "-c", f"hostname; ssh node2 hostname; tc qdisc show dev "
                                       f"{NODE_IFACE}"])
    assert out.split()[:2] == ["node1", "node2"]
    assert "tbf" in out and "1Gbit" in out


# Horovod's two-level algorithms: on a CPU build HOROVOD_HIERARCHICAL_ALLREDUCE is accepted
# and ignored (only NCCL implements it), HOROVOD_HIERARCHICAL_ALLGATHER runs MPI's
# node-local gather + cross-node exchange, which the placement report goes through.
HIERARCHICAL = {"HOROVOD_HIERARCHICAL_ALLREDUCE": "1", "HOROVOD_HIERARCHICAL_ALLGATHER": "1"}


@pytest.mark.parametrize("launcher", ["horovodrun", "horovodrun-hierarchical", "mpirun"])
def test_local_ranks_per_node(cluster, tmp_path, launcher):
    worker = [sys.executable, WORKER]
    env = HIERARCHICAL if launcher.endswith("hierarchical") else None
    if launcher.startswith("horovodrun"):
        argv = horovodrun_nodes_argv(TWO_BY_TWO, worker)
    else:
        argv = mpirun_nodes_argv(write_hostfile(str(tmp_path / "hosts"), TWO_BY_TWO), 4, worker)
    check_placement(ranks_report(run_ok(cluster, argv, env=env)), TWO_BY_TWO)


def test_horovodrun_two_nodes_trains(cluster, tmp_path):
    out_dir = str(tmp_path / "run")
    argv = horovodrun_nodes_argv(TWO_BY_TWO, python_module(
        "launch.train", *TRAIN, "--max-steps", "6", "--strategy", "sync", "--out", out_dir))
    final_line(run_ok(cluster, argv))
    s = summary(out_dir)
    assert s["world_size"] == 4 and s["steps"] == 6 and s["hostname"] == "node1"


def test_mpirun_hostfile_trains(cluster, tmp_path):
    out_dir = str(tmp_path / "run")
    hostfile = write_hostfile(str(tmp_path / "hosts"), TWO_BY_TWO)
    argv = mpirun_nodes_argv(hostfile, 4, python_module(
        "launch.train", *TRAIN, "--max-steps", "6", "--strategy", "dasgd", "--out", out_dir))
    final_line(run_ok(cluster, argv))
    s = summary(out_dir)
    assert s["world_size"] == 4 and s["strategy"] == "dasgd" and s["launcher"] == "mpirun"


def test_checkpoint_from_node1_resumes_with_rank0_on_node2(cluster, tmp_path):
    out_dir = str(tmp_path / "run")  # one directory every node sees
    common = [*TRAIN, "--strategy", "sync", "--checkpoint-interval", "4", "--out", out_dir]
    first = horovodrun_nodes_argv(TWO_BY_TWO, python_module("launch.train", *common,
                                                            "--max-steps", "4"))
    run_ok(cluster, first)
    assert summary(out_dir)["hostname"] == "node1"
    # Rank 0 (the first host listed) on node2 now; launched from node2 too.
    second = horovodrun_nodes_argv({"node2": 2, "node1": 2}, python_module(
        "launch.train", *common, "--max-steps", "8", "--resume", "latest"))
    out = run_ok(cluster, second, node="node2")
    assert "resumed from" in out and "step 4" in out, out[-3000:]
    final_line(out)
    s = summary(out_dir)
    assert s["hostname"] == "node2" and s["steps"] == 8 and s["world_size"] == 4


@pytest.mark.parametrize("strategy", ["none", "sync", "local", "dasgd"])
def test_hierarchical_allreduce_every_strategy(cluster, tmp_path, strategy):
    out_dir = str(tmp_path / strategy)
    argv = horovodrun_nodes_argv(TWO_BY_TWO, python_module(
        "launch.train", *TRAIN, "--max-steps", "4", "--strategy", strategy,
        "--period", "2", "--out", out_dir))
    final_line(run_ok(cluster, argv, env=HIERARCHICAL))
    s = summary(out_dir)
    assert s["world_size"] == 4 and s["strategy"] == strategy and s["steps"] == 4


def sbatch(cluster, run_dir, argv, export=""):
    os.makedirs(run_dir, exist_ok=True)
    job = submit(["sbatch", "--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1",
                  f"--output={run_dir}/slurm-%j.out", f"--export=ALL{export}", *argv],
                 cwd=REPO, env=cluster.node_env())
    state, code = wait_for_jobs([job], timeout=JOB_TIMEOUT, env=cluster.node_env(),
                                poll_s=0.5)[job]
    logs = [f for f in os.listdir(run_dir) if f.startswith("slurm-")]
    with open(os.path.join(run_dir, logs[0])) as f:
        log = f.read()
    assert state == "COMPLETED" and code == "0:0", f"job {state} {code}\n{log[-3000:]}"
    return log


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_sbatch_two_nodes(cluster, tmp_path, launcher):
    run_dir = str(tmp_path / launcher)
    log = sbatch(cluster, run_dir, [os.path.join(REPO, "slurm", "train.sbatch"), *TRAIN,
                                    "--max-steps", "6", "--strategy", "sync", "--out", run_dir],
                 export=f",TOOLKIT_LAUNCHER={launcher}")
    final_line(log)
    capture = log[:log.index("===== end of environment capture")]
    assert "nodes=2" in capture and "host:        node1" in capture
    s = summary(run_dir)
    assert s["world_size"] == 4 and s["launcher"] == launcher


def test_srun_local_ranks_per_node(cluster, tmp_path):
    run_dir = str(tmp_path / "ranks")
    log = sbatch(cluster, run_dir, ["--wrap", f"srun --mpi=pmix {sys.executable} {WORKER}"])
    check_placement(ranks_report(log), TWO_BY_TWO)


def test_failed_start_removes_everything(request, tmp_path):
    skip_unless_selected(request)
    # A node declaring far more memory than the machine has registers as invalid and never
    # becomes idle: the start fails after the network, sshd and every daemon are up.
    c = EmulatedCluster(str(tmp_path / "bad"), nodes=2, real_memory_mb=10 ** 9)
    with pytest.raises(RuntimeError, match="not idle"):
        c.start(timeout=15)
    # Every daemon was started with the cluster's directory on its command line.
    assert os.path.exists(c.path("log", "slurmd-node2.log")), "the start failed too early"
    assert not processes_mentioning(c.root)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"tkn{c.net.token}" not in links + namespaces


def test_bench_nodes_device_time_four_nodes(request, tmp_path):
    """launch.bench_nodes end to end on 4 emulated nodes of its own (no SLURM): device-time
    compute, the six contenders taking turns at 2 and 4 nodes, the allreduce sizes, the
    model calibrated on 2 nodes, the JSON rows, the table and the plot; the nodes are gone
    afterwards. Two rounds of short turns: a check of the machinery, not a measurement."""
    skip_unless_selected(request)
    out = tmp_path / "nodes_device.json"
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    proc = subprocess.run(
        [sys.executable, "-m", "launch.bench_nodes", "--json", str(out), "--workers", "2,4",
         "--rounds", "2", "--block-steps", "4", "--repeats", "2", "--sizes", "65536,1048576",
         "--allow-loaded"], cwd=REPO, capture_output=True, text=True, timeout=JOB_TIMEOUT * 3)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    rows = {r["workers"]: r for r in report["rows"]}
    assert sorted(rows) == [2, 4] and report["compute"] == "device:10"
    assert rows[4]["hosts"] == ["node1", "node2", "node3", "node4"]
    for row in rows.values():
        assert row["none_s"] >= 0.01  # the device time is a floor of every step
        for name in ("sync", "local", "dasgd", "ddp", "postlocal"):
            ratio = row[f"{name}_over_none"]
            assert ratio["lo"] <= ratio["median"] <= ratio["hi"] and ratio["rounds"] == 2
        assert {pt["bytes"] for pt in row["allreduce"]} == {65536, 1048576,
                                                           report["model_bytes"]}
    assert rows[2]["model_error_sync"] == pytest.approx(0, abs=1e-9)  # the calibration
    assert isinstance(rows[4]["model_error_sync"], float)
    assert isinstance(rows[4]["model_error_dasgd"], float)
    assert report["periods"] == {"none": 1, "sync": 1, "local": 4, "dasgd": 1, "ddp": 1,
                                 "postlocal": 4}
    assert report["provenance"]["command"].startswith("python -m launch.bench_nodes --json")
    md = (tmp_path / "nodes_device.md").read_text().splitlines()
    assert md[2].startswith("Reproduce: `python -m launch.bench_nodes --json")
    assert (tmp_path / "nodes_device.png").stat().st_size > 1000
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert after == before
