"""docs/faults.md's table is the list of cases the fault tests run (tests/fault_cases.py)."""
import os
import re

from tests.fault_cases import CASES, table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ("test_faults_disk.py", "test_faults_ranks.py", "test_faults_signals.py",
         "test_slurm.py")


def documented_table():
    text = open(os.path.join(REPO, "docs", "faults.md")).read()
    match = re.search(r"<!-- fault cases: begin -->\n(.*)<!-- fault cases: end -->", text,
                      re.S)
    assert match, "docs/faults.md lacks the fault cases markers"
    return match.group(1)


def test_docs_table_matches_the_cases():
    assert documented_table() == table(), \
        "docs/faults.md is out of date: python -m tests.fault_cases --write"


def test_every_case_is_run_by_a_test():
    sources = "".join(open(os.path.join(REPO, "tests", name)).read() for name in TESTS)
    missing = [c.id for c in CASES if f'"{c.id}"' not in sources]
    assert missing == [], f"cases no test runs: {missing}"
    assert len({c.id for c in CASES}) == len(CASES)
