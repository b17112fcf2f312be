"""`pytest --load N --load-record FILE.json`: what a session under load did, with provenance.

The record holds every test's outcome and duration, the background load asked for, the
load averages sampled every 30 s while the session ran (their range says how loaded the
machine really was: the busy loops plus whatever else ran), and the provenance block of
every results file (experiments/provenance.py). docs/results/faults_under_load.{json,md}
are made from such records: `python -m tests.load_record RECORD.json...` (in run order).
"""
import json
import os
import sys
import threading
import time

from experiments import provenance


class LoadRecord:
    """A pytest plugin: collects outcomes, samples the load, writes the JSON at the end."""

    def __init__(self, path, per_core, argv):
        self.path, self.per_core, self.argv = path, per_core, argv
        self.started = provenance.start()
        self.tests, self.samples = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(30)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.tests.append({"test": report.nodeid, "outcome": report.outcome,
                               "seconds": round(report.duration, 1)})

    def pytest_sessionfinish(self, session):
        self._stop.set()
        self._thread.join()
        counts = {k: sum(t["outcome"] == k for t in self.tests)
                  for k in ("passed", "failed", "skipped")}
        record = {"busy_per_core": self.per_core, **counts,
                  "load_1min_min": min(self.samples), "load_1min_max": max(self.samples),
                  "tests": self.tests,
                  "provenance": provenance.provenance(self.argv, self.started,
                                                      module="pytest")}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, self.path)


def markdown(records):
    """The table of docs/results/faults_under_load.md, one row per record."""
    lines = ["# Fault tests under load", "",
             "Every fault test file (`make test-load` or a part of it) run beside busy "
             "processes (tests/conftest.py, `--load N`), recorded with `--load-record`. "
             "The 1-minute load average is sampled every 30 s; its range includes all "
             "other work on the machine. Mechanism: [../faults.md](../faults.md#under-load).",
             "", "| command | commit | CPU, cores | busy per core | load (1 min) during | "
             "passed | failed | failed tests | wall |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        p = r["provenance"]
        failed = ", ".join(t["test"].split("::")[-1] for t in r["tests"]
                           if t["outcome"] == "failed") or "none"
        lines.append(f"| `{p['command']}` | {p['commit'][:10]}{' (dirty)' if p['dirty'] else ''}"
                     f" | {p['cpu_model']}, {p['cores']} | {r['busy_per_core']:g} | "
                     f"{r['load_1min_min']:.1f}–{r['load_1min_max']:.1f} | {r['passed']} | "
                     f"{r['failed']} | {failed} | {p['wall_s'] / 60:.0f} min |")
    return "\n".join(lines) + "\n"


def publish(paths, stem):
    """STEM.json (the records, in the order given) and STEM.md (their table)."""
    records = []
    for path in paths:
        with open(path) as f:
            records.append(json.load(f))
    with open(stem + ".json", "w") as f:
        json.dump({"records": records}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(records))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tests.load_record RECORD.json... (writes "
                 "docs/results/faults_under_load.{json,md})")
    publish(sys.argv[1:], os.path.join("docs", "results", "faults_under_load"))
