"""Where a result came from: one dict for the "provenance" key of every results JSON.

    started = start()                      # first thing, before starting any worker process
    ...                                    # the benchmark or study
    report["provenance"] = provenance(argv, started, threads=1, module="launch.study")

Fields: command (the exact command line, as `python -m MODULE ARGS`), argv, git commit and
whether the working tree had uncommitted changes to tracked files, CPU model, cores,
threads used per process, the 1/5/15-minute load averages at start and at end, the versions
of Python, torch, Horovod and Open MPI, the date (UTC) at start and end, the wall time, and
`loaded`: true when the 1-minute load average at start, i.e. other work on the machine,
was above the number of cores (timings of such a run are inflated by the sharing).
"""
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from importlib import metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("command", "argv", "commit", "dirty", "cpu_model", "cores", "threads",
          "load_start", "load_end", "python", "torch", "horovod", "openmpi", "date_start",
          "date_end", "wall_s", "loaded")


def start():
    """The clock and the load average, taken before the caller starts its own processes."""
    return {"time": time.time(), "load": list(os.getloadavg())}


def _git(*args):
    try:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state():
    """(commit, dirty): dirty = tracked files differ from the commit (untracked ignored)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return (commit.strip() if commit else None,
            None if status is None else bool(status.strip()))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def package_version(name):
    module = sys.modules.get(name)  # already imported: the version actually in use
    if module is not None and getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def openmpi_version():
    """From `mpirun --version` ("mpirun (Open MPI) 4.1.4"); None without an Open MPI."""
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"Open MPI\)?\s+(\S+)", out)
    return match.group(1) if match else None


def _utc(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="seconds")


def provenance(argv, started, *, threads=None, module=None):
    """The provenance dict. argv: the arguments after the module (None: sys.argv[1:]);
    started: start()'s dict, or a time.time() value (then the start load is not known);
    threads: compute threads per process; module: shown as `python -m MODULE`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not isinstance(started, dict):
        started = {"time": float(started), "load": None}
    program = f"python -m {module}" if module else "python " + os.path.basename(sys.argv[0])
    commit, dirty = git_state()
    cores = os.cpu_count()
    end = time.time()
    load_start = started.get("load")
    return {
        "command": " ".join([program, shlex.join(map(str, argv))]).strip(),
        "argv": [str(a) for a in argv],
        "commit": commit, "dirty": dirty,
        "cpu_model": cpu_model(), "cores": cores, "threads": threads,
        "load_start": load_start, "load_end": list(os.getloadavg()),
        "python": platform.python_version(), "torch": package_version("torch"),
        "horovod": package_version("horovod"), "openmpi": openmpi_version(),
        "date_start": _utc(started["time"]), "date_end": _utc(end),
        "wall_s": round(end - started["time"], 3),
        "loaded": None if load_start is None or not cores else load_start[0] > cores,
    }
