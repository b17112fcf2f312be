"""Fixtures and options shared by several test files.

Running tests on a loaded machine (docs/faults.md, "Under load"):
- `pytest --load N` starts N busy processes per core (plain `while True: pass` loops at
  normal priority) before the first test and kills them at the end, also when a test fails
  or the run is interrupted; each loop also ends by itself once pytest is gone (even after
  a SIGKILL). `make test-load` runs every fault test file so.
- A test marked `load` always runs under load: LOAD_PER_CORE busy processes per core for the
  test alone, unless the session has its own (`--load N`; `--load 0`: none at all). These
  are the representative fault cases that `make test` runs under load.
"""
import os
import subprocess
import sys
import time

import pytest
import torch

# Busy, and checks every ~10 ms of CPU time that the pytest that started it is alive.
_BUSY = ("import os, sys\n"
         "parent = int(sys.argv[1])\n"
         "while os.getppid() == parent:\n"
         "    for _ in range(100000):\n"
         "        pass\n")


LOAD_PER_CORE = 2


def pytest_addoption(parser):
    parser.addoption("--load", type=float, default=None, metavar="N",
                     help="run the session under N busy processes per core (killed at the "
                          "end); e.g. --load 2 on 2 cores: 4 processes. --load 0: not even "
                          "the tests marked `load`")
    parser.addoption("--load-record", default=None, metavar="FILE.json",
                     help="write the outcomes, the load sampled during the session and the "
                          "provenance to FILE.json (tests/load_record.py)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"load: runs under {LOAD_PER_CORE} busy processes per core of its own "
                   f"unless the session has --load (docs/faults.md, Under load)")
    per_core = config.getoption("load")
    if per_core is not None and per_core < 0:
        raise pytest.UsageError(f"--load must be >= 0, got {per_core:g}")
    # Only the controlling process (not an xdist worker) starts the load.
    if per_core and not hasattr(config, "workerinput"):
        config._busy = BackgroundLoad(per_core)
    record = config.getoption("load_record")
    if record and not hasattr(config, "workerinput"):
        from tests.load_record import LoadRecord
        config.pluginmanager.register(
            LoadRecord(record, per_core or 0, list(config.invocation_params.args)),
            "load_record")


@pytest.fixture(autouse=True)
def _load_for_marked_tests(request):
    """The background load of a test marked `load` (when the session has none)."""
    if request.node.get_closest_marker("load") is None or \
            request.config.getoption("load") is not None:
        yield
        return
    busy = BackgroundLoad(LOAD_PER_CORE)
    try:
        yield
    finally:
        busy.stop()


class BackgroundLoad:
    """round(per_core x cores) busy processes from now until stop()."""

    def __init__(self, per_core):
        self.cores = len(os.sched_getaffinity(0))
        self.count = max(1, round(per_core * self.cores))
        self.per_core = per_core
        self.load_before = os.getloadavg()
        self.started = time.time()
        self.procs = [subprocess.Popen([sys.executable, "-c", _BUSY, str(os.getpid())],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                      for _ in range(self.count)]

    def describe(self):
        return (f"{self.count} busy processes ({self.per_core:g} per core, {self.cores} "
                f"cores); load average {' '.join(f'{x:.1f}' for x in self.load_before)} "
                f"before they started")

    def stop(self):
        load_end = os.getloadavg()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()
        self.procs = []
        return load_end


def pytest_report_header(config):
    busy = getattr(config, "_busy", None)
    return f"background load: {busy.describe()}" if busy else None


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    busy = getattr(config, "_busy", None)
    if busy:
        load = os.getloadavg()
        terminalreporter.write_line(
            f"background load: {busy.describe()}; at the end "
            f"{' '.join(f'{x:.1f}' for x in load)} after {time.time() - busy.started:.0f} s")


@pytest.fixture
def one_thread():
    """One intra-op thread: bit-for-bit comparisons need the same thread count for every
    product, and small models on a shared 2-core machine mostly wait for a busy core with
    a second thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_unconfigure(config):
    """A process that outlives its summary (a child it waits for at exit, a thread that
    never ends) would hold CI until its time limit: give it two minutes, then print every
    thread's stack and exit with an error. The background load (--load) ends here."""
    busy = getattr(config, "_busy", None)
    if busy:
        busy.stop()
    import faulthandler
    faulthandler.dump_traceback_later(120, exit=True)
