"""The Open MPI collective rules the launchers install (toolkit/openmpi_coll_rules.conf)."""
import os
import re
import subprocess
import sys

import pytest

from tests.mpi_util import py, run_ranks
from toolkit.mpi_policy import MPI_DEFAULTS, OPENMPI_COLL_RULES, launcher_env

ALLREDUCE = 2  # Open MPI's collective id (COLLTYPE_T in coll_base_functions.h)


def parse_rules(path):
    """Open MPI 4's rules grammar: whitespace-separated integers, '#' to end of line.
    Returns {collective id: {comm size: [(msg size, algorithm, faninout, segsize), ...]}}."""
    with open(path) as f:
        lines = f.read().splitlines()
    numbers = iter([int(tok) for line in lines for tok in line.split("#", 1)[0].split()])
    take = lambda: next(numbers)  # noqa: E731
    rules = {}
    for _ in range(take()):
        coll = rules.setdefault(take(), {})
        for _ in range(take()):
            comm_size = take()
            coll[comm_size] = [tuple(take() for _ in range(4)) for _ in range(take())]
    assert next(numbers, None) is None, "numbers left over after the last rule"
    return rules


def test_rules_file_is_well_formed_and_selects_ring_for_two_rank_large_messages():
    rules = parse_rules(OPENMPI_COLL_RULES)
    assert set(rules) == {ALLREDUCE}
    by_comm = rules[ALLREDUCE]
    for comm_size, msg_rules in by_comm.items():
        sizes = [m[0] for m in msg_rules]
        assert sizes[0] == 0, "Open MPI ignores a file whose first message rule is not size 0"
        assert sizes == sorted(sizes)
    # 2 ranks: built-in decision (0) for small messages, ring (4) from 1 MiB to 64 MiB
    assert by_comm[2] == [(0, 0, 0, 0), (1 << 20, 4, 0, 0), (64 << 20, 0, 0, 0)]
    # 3+ ranks: an explicit "use the built-in decision", otherwise the 2-rank rule would apply
    assert by_comm[3] == [(0, 0, 0, 0)]


def test_launcher_env_sets_the_rules_unless_the_user_tunes_collectives(monkeypatch):
    """The user's own OMPI_MCA_coll_tuned_* (in the environment or in `extra`) wins."""
    for key in list(os.environ):
        if key.startswith("OMPI_MCA_coll_tuned_"):
            monkeypatch.delenv(key)
    env = launcher_env()
    assert env["OMPI_MCA_coll_tuned_use_dynamic_rules"] == "1"
    assert env["OMPI_MCA_coll_tuned_dynamic_rules_filename"] == OPENMPI_COLL_RULES
    monkeypatch.setenv("OMPI_MCA_coll_tuned_allreduce_algorithm", "3")
    env = launcher_env()
    assert env["OMPI_MCA_coll_tuned_allreduce_algorithm"] == "3"
    assert not set(MPI_DEFAULTS) & set(env), "a user's own tuning must not be mixed with ours"
    monkeypatch.delenv("OMPI_MCA_coll_tuned_allreduce_algorithm")
    env = launcher_env({"OMPI_MCA_coll_tuned_use_dynamic_rules": "0"})
    assert env["OMPI_MCA_coll_tuned_use_dynamic_rules"] == "0"
    assert "OMPI_MCA_coll_tuned_dynamic_rules_filename" not in env


def test_old_module_name_prints_the_same_env_lines():
    """Job scripts `eval` the output of `python -m toolkit.launcher env`: under its old name
    the policy prints the same lines on stdout and one note on stderr."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = lambda module: subprocess.run(  # noqa: E731
        [sys.executable, "-m", module, "env", "--ntasks", "2"], cwd=repo, capture_output=True,
        text=True, timeout=60)
    new, old = run("toolkit.mpi_policy"), run("toolkit.launcher")
    assert new.returncode == old.returncode == 0, old.stderr
    assert old.stdout == new.stdout and new.stdout.startswith("export ")
    assert old.stderr == ("note: toolkit.launcher is now toolkit.mpi_policy "
                          "(python -m toolkit.mpi_policy ...)\n")


@pytest.mark.mpi
def test_two_rank_allreduce_follows_the_rules_file():
    """Behaviour, not timing: with the rules a 45 MB allreduce stops page-faulting a fresh
    temporary in on every call (measured: ~5500 faults per call without, ~550 with)."""
    def faults(env):
        out = run_ranks(2, py("allreduce_faults.py", 11_200_000, 4), env=env).stdout
        return int(re.search(r"faults_per_call=(\d+)", out).group(1))

    with_rules = faults({**MPI_DEFAULTS})
    built_in = faults({"OMPI_MCA_coll_tuned_use_dynamic_rules": "0"})
    assert built_in > 3 * max(with_rules, 1), (with_rules, built_in)
