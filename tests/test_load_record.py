"""`pytest --load N --load-record FILE`: a real pytest session writes the record, and the
results table is made from it."""
import json
import subprocess
import sys

from tests.load_record import markdown
from tests.mpi_util import REPO
from experiments.provenance import FIELDS


def test_a_session_under_load_writes_its_record(tmp_path):
    record = tmp_path / "record.json"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--load", "0.5", "--load-record", str(record),
                          "tests/test_faults_table.py"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(record.read_text())
    assert data["busy_per_core"] == 0.5 and data["failed"] == 0
    assert data["passed"] == len(data["tests"]) >= 1
    assert all(t["outcome"] == "passed" and t["seconds"] >= 0 for t in data["tests"])
    assert 0 <= data["load_1min_min"] <= data["load_1min_max"]
    assert set(FIELDS) <= set(data["provenance"])
    assert "--load-record" in data["provenance"]["command"]
    table = markdown([data])
    assert "| 0.5 |" in table and "| none |" in table, table
