"""The SLURM scripts on a real single-node SLURM cluster started on this host.

The cluster (tests/slurm_cluster.py) installs Debian's slurmctld/slurmd/munge when missing,
runs from a temporary directory and is stopped by pid at the end of the session. Jobs run
the real training (launch.train on digits, tiny sizes) through slurm/train.sbatch.
"""
import csv
import json
import os
import subprocess
import sys

import pytest

from tests.slurm_cluster import SlurmCluster
from toolkit.scaling.slurm_jobs import submit, wait_for_jobs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(REPO, "slurm", "train.sbatch")
TINY = ["--model", "small_cnn", "--norm", "bn", "--dataset", "digits", "--epochs", "1",
        "--max-steps", "8", "--log-interval", "4", "--checkpoint-interval", "0"]
JOB_TIMEOUT = 300

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd/munged with SlurmUser=root needs root")
    c = SlurmCluster(str(tmp_path_factory.mktemp("slurm")), cpus=2)
    # The jobs inherit the submitter's environment: a private cache for env_capture.sh, so
    # the first job runs the real `horovodrun --check-build` and the others reuse it.
    c.extra_env["TOOLKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("toolkit-cache"))
    try:
        c.start()
        yield c
    finally:
        # Cancel whatever is still queued or running, so that no slurmstepd outlives slurmd.
        subprocess.run(["scancel", "--full", "--user", "root"], env=c.env(), capture_output=True)
        c.stop()


def job_log(run_dir):
    logs = [f for f in os.listdir(run_dir) if f.startswith("slurm-") and f.endswith(".out")]
    assert logs, f"no job log in {run_dir}"
    with open(os.path.join(run_dir, sorted(logs)[-1])) as f:
        return f.read()


def run_template(cluster, run_dir, launcher, *, extra_env="", train=TINY):
    os.makedirs(run_dir, exist_ok=True)
    job = submit(["sbatch", "--ntasks=2", "--cpus-per-task=1", "--job-name", f"t-{launcher}",
                  f"--output={run_dir}/slurm-%j.out",
                  f"--export=ALL,TOOLKIT_LAUNCHER={launcher}{extra_env}",
                  TEMPLATE, *train, "--strategy", "sync", "--out", run_dir],
                 cwd=REPO, env=cluster.env())
    state, code = wait_for_jobs([job], timeout=JOB_TIMEOUT, env=cluster.env(), poll_s=0.5)[job]
    return state, code


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_train_template_two_tasks(cluster, tmp_path, launcher):
    run_dir = str(tmp_path / launcher)
    state, code = run_template(cluster, run_dir, launcher)
    log = job_log(run_dir)
    assert state == "COMPLETED" and code == "0:0", f"job {state} {code}\n{log[-3000:]}"

    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    # Two real ranks (not two copies of rank 0 of 1), started by the chosen launcher.
    assert summary["world_size"] == 2 and summary["launcher"] == launcher
    assert summary["strategy"] == "sync" and summary["global_batch"] == 2 * 32
    assert summary["steps"] == 8 and summary["images_per_s"] > 0
    assert 0.0 <= summary["test_acc"] <= 1.0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert records, "metrics.jsonl is empty"

    # Environment capture at the top of the job log, before the training output.
    capture = log[:log.index("===== end of environment capture")]
    for needle in ("mpirun (Open MPI)", "torch 2.", "horovod 0.28", "mpi4py ",
                   "horovodrun --check-build", "[X] PyTorch", "OMP_NUM_THREADS=1",
                   "module list"):
        assert needle in capture, f"{needle!r} missing from the environment capture"
    assert f"launcher:    {launcher}" in capture
    if launcher == "srun":
        assert "srun --mpi=pmix --ntasks=2 --cpus-per-task=1" in log
    assert "final: test_acc=" in log


def test_template_reports_missing_python(cluster, tmp_path):
    run_dir = str(tmp_path / "nopython")
    state, code = run_template(cluster, run_dir, "srun",
                               extra_env=",TOOLKIT_PYTHON=/nonexistent/python")
    assert state == "FAILED" and code.startswith("2:"), (state, code)
    assert "no Python found: export TOOLKIT_PYTHON" in job_log(run_dir)
    assert not os.path.exists(os.path.join(run_dir, "summary.json"))


def test_sweep_and_report(cluster, tmp_path):
    out = tmp_path / "sweep"
    cli = [sys.executable, "-m", "launch.scaling"]
    # Through the user-facing wrapper slurm/sweep.sh (= python -m launch.scaling sweep).
    proc = subprocess.run([os.path.join(REPO, "slurm", "sweep.sh"), "--workers", "1,2",
                           "--batch-size", "16", "--out", str(out), "--wait",
                           "--timeout", str(JOB_TIMEOUT), "--", *TINY],
                          cwd=REPO, env=cluster.env(), capture_output=True, text=True,
                          timeout=JOB_TIMEOUT + 60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("submitted job") == 8

    report = subprocess.run(cli + ["report", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(open(out / "scaling_report.csv")))
    got = {(r["mode"], r["strategy"], int(r["workers"])): r for r in rows}
    assert set(got) == {(m, s, n) for m in ("weak", "strong") for s in ("sync", "dasgd")
                        for n in (1, 2)}
    for (mode, strategy, n), r in got.items():
        # weak: 16 per rank; strong: global 16 x 2 = 32 split over the ranks
        assert int(r["batch_per_rank"]) == (16 if mode == "weak" else 32 // n)
        assert float(r["images_per_s"]) > 0 and float(r["efficiency"]) > 0
        summary = json.load(open(out / f"{mode}-{strategy}-n{n}" / "summary.json"))
        assert summary["world_size"] == n and summary["strategy"] == strategy
        assert float(r["images_per_s"]) == pytest.approx(summary["images_per_s"])
        if n == 1:
            assert float(r["speedup"]) == 1.0
    assert os.path.getsize(out / "scaling_report.png") > 10_000
    assert "| strong | dasgd | 2 |" in report.stdout

    # `wait` finds the sweep's job ids in the run directories; all of them completed.
    waited = subprocess.run(cli + ["wait", str(out), "--timeout", "60"], cwd=REPO,
                            env=cluster.env(), capture_output=True, text=True, timeout=120)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.count(": COMPLETED") == 8

    # Re-running the sweep never overwrites finished runs.
    again = subprocess.run(cli + ["sweep", "--workers", "1,2", "--batch-size", "16",
                                  "--out", str(out), "--", *TINY],
                           cwd=REPO, env=cluster.env(), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and again.stdout.count("finished (summary.json)") == 8
