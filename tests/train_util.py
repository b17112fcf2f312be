"""Run launch.train in tests: on real ranks or as one plain process."""
import json
import os
import re
import subprocess
import sys

from tests.mpi_util import REPO, run_ranks
from toolkit.mpi_policy import launcher_env

FAST = ["--model", "small_cnn", "--dataset", "digits", "--batch-size", "32",
        "--log-interval", "5", "--threads", "1"]


def train_argv(*args):
    return [sys.executable, "-m", "launch.train", *FAST, *map(str, args)]


def train_ranks(np_, *args, launcher="mpirun", timeout=300, check=True):
    return run_ranks(np_, train_argv(*args), launcher=launcher, timeout=timeout, check=check)


def single_env():
    """The environment of a run without a launcher (no inherited rank variables)."""
    env = launcher_env({"PYTHONPATH": REPO})
    for var in [v for v in env if v.startswith(("OMPI_COMM_WORLD", "SLURM_", "HOROVOD_"))]:
        del env[var]
    return env


def train_single(*args, timeout=300):
    """One process, no launcher (Horovod of size 1)."""
    return subprocess.run(train_argv(*args), cwd=REPO, env=single_env(), capture_output=True,
                          text=True, timeout=timeout)


def train_single_together(*runs, timeout=300):
    """Several independent single-process runs at the same time (one argument tuple each;
    give each --threads 1 on a 2-core machine); their CompletedProcesses in order."""
    jobs = [subprocess.Popen(train_argv(*args), cwd=REPO, env=single_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in runs]
    done = []
    try:
        for args, job in zip(runs, jobs):
            stdout, stderr = job.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr))
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
    return done


def records(out, kind):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def final_line(proc):
    # horovodrun over MPI tags every line with "[job,rank]<stdout>:".
    lines = [l[l.index("final: "):] for l in proc.stdout.splitlines()
             if l.startswith("final: ") or "]<stdout>:final: " in l]
    assert lines, f"no final line in:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # The whole summary on ONE line: launchers tag each forwarded chunk, so a line printed
    # in several writes arrives split (seen under horovodrun before line_print).
    assert re.fullmatch(r"final: test_acc=\S+ images_per_s=\S+ metrics=\S+ checkpoint=\S+",
                        lines[-1]), lines[-1]
    return lines[-1]
