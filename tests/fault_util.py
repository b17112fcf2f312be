"""Running a real training job, injecting a fault and checking how it ended (tests/test_faults_*)."""
import os
import re
import subprocess
import sys
import threading
import time

import psutil
import torch

from tests.mpi_util import REPO
from tests.train_util import train_argv
from toolkit.mpi_policy import horovodrun_argv, launcher_env, mpirun_argv

# Long enough that only the injected fault ends it.
LONG = ("--norm", "bn", "--epochs", "200", "--checkpoint-interval", "5", "--log-interval", "5")
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|Horovod has been shut down")


def job_env(extra=None):
    env = launcher_env(extra)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def launch_argv(launcher, np_, args):
    argv = train_argv(*args)
    if launcher == "mpirun":
        return mpirun_argv(np_, argv)
    if launcher == "horovodrun":
        return horovodrun_argv(np_, argv)
    if launcher == "none":
        return argv
    raise ValueError(f"unknown launcher {launcher!r}")


def start(launcher, np_, args, *, prefix=(), env=None):
    """The job in its own session (so that a test can signal just the launcher, and a
    terminal's Ctrl-C never reaches it), output captured."""
    env = job_env(env)
    if launcher == "none":
        for var in [v for v in env if v.startswith(("OMPI_COMM_WORLD", "SLURM_", "HOROVOD_"))]:
            del env[var]
    return subprocess.Popen([*prefix, *launch_argv(launcher, np_, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def rank_pids(job):
    """pids of the training processes (python -m launch.train) under the job."""
    try:
        children = psutil.Process(job.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    pids = []
    for p in children:
        try:
            if "launch.train" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def descendants(job):
    """psutil.Process objects of every process below the job. Each remembers its start
    time: a pid that a later process reuses (pid_max is 32768 on small machines) is not
    taken for it."""
    try:
        return psutil.Process(job.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


class Lines:
    """A running process's stdout and stderr read as they arrive (so a test can watch the
    ranks' own progress lines while the job runs), each line with the time it came."""

    def __init__(self, proc):
        self.proc, self.lines, self._lock = proc, [], threading.Lock()
        self._threads = [threading.Thread(target=self._read, args=(stream, name), daemon=True)
                         for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
        for thread in self._threads:
            thread.start()

    def _read(self, stream, name):
        for line in iter(stream.readline, ""):
            with self._lock:
                self.lines.append((time.time(), name, line))

    def text(self, name=None):
        with self._lock:
            return "".join(line for _, n, line in self.lines if name in (None, n))

    def close(self, timeout=10):
        """Wait for both streams to end (the job and everything holding them is gone)."""
        for thread in self._threads:
            thread.join(timeout)
        return self.text("stdout"), self.text("stderr")


def wait_for(predicate, timeout, interval=0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def training(job, out, timeout=120):
    """Wait until the job has written a checkpoint (its ranks are past the start-up and
    train). A job that ended first fails the test with its output, so that the cause is
    seen, not only that no rank was left to inject the fault into."""
    assert wait_for(lambda: checkpoints(out) or job.poll() is not None, timeout), \
        f"no checkpoint within {timeout} s"
    if job.poll() is not None:
        stdout, stderr = job.communicate()
        raise AssertionError(f"the job ended (exit {job.returncode}) before the fault was "
                             f"injected:\n{stdout[-2000:]}\n{stderr[-4000:]}")


def checkpoints(out):
    return sorted((out / "checkpoints").glob("ckpt-*.pt")) if (out / "checkpoints").is_dir() \
        else []


def alive(proc):
    """The process (a psutil.Process) still runs: the same one, not a later process that
    reuses its pid, and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Seen:
    """Every process the job ever had below it, sampled in the background: the ranks,
    mpirun's children, the horovodrun shell's mpirun. A fault may end some of them before
    a test could list them."""

    def __init__(self, job, interval=0.2):
        self.job, self.procs, self._stop = job, set(), threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval):
        while not self._stop.is_set():
            self.procs.update(descendants(self.job))  # psutil.Process: equal by pid and start
            if self.job.poll() is not None and not any(alive(p) for p in self.procs):
                return
            self._stop.wait(interval)

    def ranks(self):
        return rank_pids(self.job)

    def stop(self):
        """Every process seen (psutil.Process objects)."""
        self._stop.set()
        self._thread.join()
        return list(self.procs)


def finish(job, seen, timeout=60):
    """Wait for the job's output to close and every process it had to be gone (at most
    `timeout` s in all); returns (stdout, stderr, seconds). Whatever is still alive then is
    killed (by pid) and the test fails naming it."""
    start_t = time.time()
    try:
        stdout, stderr = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout = stderr = ""
    procs = seen.stop()
    wait_for(lambda: not any(alive(p) for p in procs),
             max(0.1, timeout - (time.time() - start_t)), interval=0.1)
    left = [p for p in procs if alive(p)]
    for proc in left:
        try:
            proc.kill()  # psutil refuses a pid that another process now has
        except psutil.NoSuchProcess:
            pass
    if job.poll() is None:
        left.append(job)
        job.kill()
        stdout, stderr = job.communicate()
    assert not left, (f"still running {timeout} s after the fault: pids "
                      f"{[p.pid for p in left]}\n{stderr[-3000:]}")
    return stdout, stderr, time.time() - start_t


def error_lines(text):
    """`error:` lines, without the launchers' `[1,0]<stderr>:` tags."""
    return [line[line.index("error:"):] for line in text.splitlines() if "error:" in line
            and (line.startswith("error:") or re.match(r"^\[\d+,\d+\]<std(err|out)>:error:", line))]


def assert_no_traceback(*texts):
    for text in texts:
        match = TRACEBACK.search(text)
        assert match is None, f"a traceback reached the user:\n{text[-3000:]}"


def assert_intact(path):
    """A complete checkpoint that torch loads, holding a step."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state["step"] > 0
    return state


def no_temporary_files(directory):
    return [str(p) for p in directory.rglob("*") if p.name.startswith(".tmp") or
            p.name.endswith(".tmp")]
