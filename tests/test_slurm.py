"""The SLURM scripts on a real single-node SLURM cluster started on this host.

The cluster (tests/slurm_cluster.py) installs Debian's slurmctld/slurmd/munge when missing,
runs from a temporary directory and is stopped by pid at the end of the session. Jobs run
the real training (launch.train on digits, tiny sizes) through slurm/train.sbatch.
"""
import csv
import json
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest
import torch

from tests.fault_util import wait_for
from tests.slurm_cluster import SlurmCluster
from toolkit.mpi_policy import launcher_env
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


# ---- stopping jobs cleanly (docs/faults.md) ------------------------------------------------

LONG = ["--model", "small_cnn", "--norm", "bn", "--dataset", "digits", "--epochs", "200",
        "--log-interval", "5", "--checkpoint-interval", "5", "--strategy", "dasgd"]
STOP_LINE = re.compile(r"stopped by (\S+) at step (\d+): checkpoint (\S+);")


def submit_template(cluster, run_dir, launcher, train, *sbatch_args, extra_env=""):
    os.makedirs(run_dir, exist_ok=True)
    return submit(["sbatch", "--ntasks=2", "--cpus-per-task=1", "--job-name", f"f-{launcher}",
                   f"--output={run_dir}/slurm-%j.out", *sbatch_args,
                   f"--export=ALL,TOOLKIT_LAUNCHER={launcher}{extra_env}",
                   TEMPLATE, *train, "--out", run_dir], cwd=REPO, env=cluster.env())


def training_pids(run_dir):
    """pids of this run's ranks (and launchers) on the node, found by their --out."""
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "launch.train" in cmd and str(run_dir) in cmd:
            pids.append(p.info["pid"])
    return pids


def assert_clean_stop(run_dir, log, stop_signal):
    """The log ends with the stop line, the final line and the exit line; the checkpoint of
    the stop step loads; summary.json records the stop."""
    tail = [line for line in log.splitlines() if line.strip()][-4:]
    stops = [i for i, line in enumerate(tail) if STOP_LINE.search(line)]
    assert stops and "final: " in tail[-2] and \
        tail[-1].startswith("train.sbatch: launcher exited with code 0"), "\n".join(tail)
    by, step, path = STOP_LINE.search(tail[stops[0]]).groups()
    assert by == stop_signal
    state = torch.load(path, weights_only=True)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert state["step"] == summary["steps"] == int(step) and summary["stopped_by"] == by
    assert "Traceback" not in log and "error:" not in log


@pytest.mark.parametrize("case, launcher", [("sbatch-usr1-srun", "srun"),
                                            ("sbatch-usr1-mpirun", "mpirun")])
def test_stop_signal_to_the_job_checkpoints_under_both_launchers(cluster, tmp_path, case,
                                                                 launcher):
    """What `sbatch --signal=B:USR1@T` and `scancel --batch --signal=USR1` do: the script's
    handler forwards the stop to srun or mpirun, which pass it to every rank."""
    run_dir = tmp_path / case
    job = submit_template(cluster, run_dir, launcher, LONG)
    ckpts = run_dir / "checkpoints"
    assert wait_for(lambda: ckpts.is_dir() and any(ckpts.iterdir()), JOB_TIMEOUT), \
        job_log(run_dir)[-3000:]
    pids = training_pids(run_dir)
    assert len(pids) >= 2, pids
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=cluster.env(), check=True)
    state, code = wait_for_jobs([job], timeout=120, env=cluster.env(), poll_s=0.5)[job]
    log = job_log(run_dir)
    assert state == "COMPLETED" and code == "0:0", f"{state} {code}\n{log[-3000:]}"
    assert_clean_stop(run_dir, log, "SIGUSR1")
    assert wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 10), pids


@pytest.mark.parametrize("case", ["sbatch-time-limit"])
def test_time_limit_warning_fits_a_short_job(cluster, tmp_path, case):
    """A 2-minute job: the template warns the ranks 30 s before the limit (not 120 s, which
    would be before the start), so they checkpoint and the job completes. The run is too
    long to finish by itself first (on an idle machine LONG's 200 epochs take < 90 s)."""
    run_dir = tmp_path / case
    job = submit_template(cluster, run_dir, "srun", LONG + ["--epochs", "100000"], "--time=2")
    state, code = wait_for_jobs([job], timeout=JOB_TIMEOUT, env=cluster.env(), poll_s=0.5)[job]
    log = job_log(run_dir)
    assert state == "COMPLETED" and code == "0:0", f"{state} {code}\n{log[-3000:]}"
    assert "the ranks are asked to stop 30 s before the limit" in log
    assert_clean_stop(run_dir, log, "SIGUSR1")


@pytest.mark.parametrize("case", ["sbatch-early-signal"])
def test_signal_during_the_set_up_is_not_lost(cluster, tmp_path, case):
    """A stop while the job still captures its environment (an empty cache: the real
    `horovodrun --check-build` takes seconds) ends the job cleanly without starting it."""
    run_dir = tmp_path / case
    job = submit_template(cluster, run_dir, "srun", LONG,
                          extra_env=f",TOOLKIT_CACHE_DIR={tmp_path / 'empty-cache'}")
    assert wait_for(lambda: os.path.exists(run_dir) and any(
        f.startswith("slurm-") for f in os.listdir(run_dir)), 60)
    assert wait_for(lambda: "environment capture" in job_log(run_dir), 60)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=cluster.env(), check=True)
    state, code = wait_for_jobs([job], timeout=120, env=cluster.env(), poll_s=0.5)[job]
    log = job_log(run_dir)
    assert state == "COMPLETED" and code == "0:0", f"{state} {code}\n{log[-3000:]}"
    tail = [line for line in log.splitlines() if line.strip()][-2:]
    assert "stopped by SIGUSR1 before the training started" in tail[0], "\n".join(tail)
    assert tail[1].startswith("train.sbatch: launcher exited with code 0"), tail[1]
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize("case, how", [("usr1-srun", "SIGUSR1"), ("term-srun", "SIGTERM"),
                                       ("timeout-srun", "timeout")])
def test_stopping_srun(cluster, tmp_path, case, how):
    """srun forwards SIGUSR1 as it is: a clean stop. SIGTERM (also from `timeout`) makes
    srun cancel the step: the ranks get SIGCONT and SIGTERM, take the first as their stop
    request, and have the cluster's KillWait (5 s on this test cluster, 30 s by default)
    before SIGKILL. Either way nothing is left and the newest checkpoint is whole."""
    run_dir = tmp_path / case
    prefix = ["timeout", "-s", "TERM", "3600"] if how == "timeout" else []
    argv = [*prefix, "srun", "--mpi=pmix", "--ntasks=2", "--cpus-per-task=1", sys.executable,
            "-m", "launch.train", "--threads", "1", *LONG, "--out", str(run_dir)]
    env = cluster.env(launcher_env({"PYTHONPATH": REPO}))
    job = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ckpts = run_dir / "checkpoints"
        assert wait_for(lambda: (ckpts.is_dir() and any(ckpts.iterdir())) or
                          job.poll() is not None, JOB_TIMEOUT)
        pids = training_pids(run_dir)
        # timeout's SIGALRM is its expiry: it then sends SIGTERM to srun
        job.send_signal({"SIGUSR1": signal.SIGUSR1, "SIGTERM": signal.SIGTERM,
                         "timeout": signal.SIGALRM}[how])
        stdout, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert "Traceback" not in stderr and "error: rank" not in stderr, stderr[-3000:]
    assert wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 10), pids
    newest = sorted(ckpts.glob("ckpt-*.pt"))[-1]
    state = torch.load(newest, weights_only=True)
    assert not list(ckpts.glob(".tmp*"))
    if how == "SIGUSR1":
        assert job.returncode == 0, stderr[-3000:]
        (by, step, path), = STOP_LINE.findall(stdout)
        assert by in ("SIGUSR1", "a signal on another rank") and path == str(newest)
        assert state["step"] == int(step)
    else:
        assert job.returncode == (124 if how == "timeout" else 143) or job.returncode > 128


@pytest.mark.parametrize("case", ["srun-mpi-none"])
def test_srun_without_pmi_is_refused_in_one_line(cluster, tmp_path, case):
    run_dir = str(tmp_path / case)
    state, code = run_template(cluster, run_dir, "srun", extra_env=",TOOLKIT_SRUN_MPI=none")
    log = job_log(run_dir)
    assert state == "FAILED" and code.startswith("2:"), (state, code, log[-2000:])
    last = [line for line in log.splitlines() if line.strip()][-1]
    assert last.startswith("train.sbatch: error: TOOLKIT_SRUN_MPI=none starts 2 independent"), last
    assert not os.path.exists(os.path.join(run_dir, "summary.json"))
