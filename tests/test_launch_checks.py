"""launch.train refuses a mis-launched job (srun without PMI starts N copies of rank 0)."""
import subprocess
import sys

import pytest

from tests.mpi_util import REPO, py, run_ranks
from toolkit.job import LaunchError, check_size, detect_launcher, expected_size


def test_expected_size_prefers_open_mpi_over_slurm_step_variables():
    env = {"OMPI_COMM_WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0",
           "SLURM_STEP_NUM_TASKS": "1"}
    assert expected_size(env) == ("OMPI_COMM_WORLD_SIZE", 2)
    assert detect_launcher(env) == "mpirun"


def test_srun_task_promises_its_step_size():
    env = {"SLURM_PROCID": "1", "SLURM_STEP_ID": "3", "SLURM_NTASKS": "4"}
    assert expected_size(env) == ("SLURM_NTASKS", 4)
    assert detect_launcher(env) == "srun"
    with pytest.raises(LaunchError, match="SLURM_NTASKS=4.*srun --mpi=pmix"):
        check_size(1, expected_size(env))
    check_size(4, expected_size(env))


def test_plain_python_promises_nothing():
    assert expected_size({}) is None and detect_launcher({}) == "single"


def test_launch_train_exits_2_when_srun_started_copies_without_pmi():
    env = {"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2",
           "SLURM_STEP_NUM_TASKS": "2", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "launch.train", "--epochs", "1"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "SLURM_STEP_NUM_TASKS=2" in lines[0], proc.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("np_, launcher", [(2, "mpirun"), (3, "mpirun"),
                                           (2, "horovodrun-gloo")])
def test_allreduce_across_real_ranks(np_, launcher):
    proc = run_ranks(np_, py("foundation_allreduce.py"), launcher=launcher, timeout=120)
    expect = np_ * (np_ + 1) / 2
    assert proc.stdout.count(f"allreduce ok sum={expect:g}") == np_, proc.stdout
