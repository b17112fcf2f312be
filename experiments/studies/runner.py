"""Runs a study's training jobs: each a real `python -m launch.train` (one process, or
mpirun with N ranks, oversubscribed beyond the cores), up to `jobs` single-process runs at a
time, a multi-rank run alone. Resumable, run by run, in OUT/runs/<config>_s<seed>/:

- summary.json without stopped_by: finished, never run again;
- diverged.json (written here when launch.train exits 3): finished, counts as diverged;
- summary.json with stopped_by (the study was stopped: its runs got SIGTERM, checkpointed
  and stopped cleanly): continued with launch.train --resume;
- anything else (a run killed hard): its directory is cleared and the run starts over.

SIGTERM, SIGINT or SIGHUP to the study stops its runs that way, once each, and exits; the
runs are in their own process groups (a Ctrl-C reaches the study only, which passes one
SIGTERM on: mpirun exits at once on a second one) and get SIGTERM if the study dies.
"""
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from toolkit.mpi_policy import launcher_env, mpirun_argv

from experiments.studies import plan as plan_mod

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DONE, DIVERGED, STOPPED, PARTIAL, NEW = "done", "diverged", "stopped", "partial", "new"
RETRIES = 1  # a run failing otherwise (a stalled collective: exit 4, a crash) is tried once
# more; exit 2 (bad input: an option, the data) would fail the same way again


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _die_with_parent():
    """Child side, before exec: own process group, SIGTERM when the study dies."""
    os.setpgid(0, 0)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def reap(proc):
    """Popen.poll() that also keeps the CPU seconds of the finished process and of the
    children it waited for (mpirun's ranks): proc.cpu_s."""
    if proc.returncode is not None:
        return proc.returncode
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.cpu_s = usage.ru_utime + usage.ru_stime
    return proc.returncode


def single_env():
    """Environment of a run without a launcher (no inherited rank variables)."""
    env = launcher_env({"PYTHONPATH": REPO})
    for var in [v for v in env if v.startswith(("OMPI_COMM_WORLD", "SLURM_", "HOROVOD_",
                                                "PMIX_"))]:
        del env[var]
    return env


class Runner:
    def __init__(self, out, *, scale=plan_mod.SCALE, jobs=2, data_dir=None, say=print,
                 timeout_s=None):
        self.out, self.scale, self.jobs = out, scale, max(1, jobs)
        self.data_dir, self.say, self.timeout_s = data_dir, say, timeout_s
        self.stop_signal = None
        self.failed = []

    # ---- state of a run -------------------------------------------------------------------

    def directory(self, config, seed):
        return os.path.join(self.out, "runs", f"{config.name()}_s{seed}")

    def state(self, config, seed):
        d = self.directory(config, seed)
        summary = _read_json(os.path.join(d, "summary.json"))
        if summary is not None:
            return DONE if summary.get("stopped_by") is None else STOPPED
        if os.path.exists(os.path.join(d, "diverged.json")):
            return DIVERGED
        return PARTIAL if os.path.isdir(d) else NEW

    def command(self, config, seed, resume=False):
        args = plan_mod.train_args(config, seed, self.scale, self.data_dir)
        argv = [sys.executable, "-m", "launch.train", "--out", self.directory(config, seed),
                *args, *(["--resume"] if resume else [])]
        if config.ranks == 1:
            return argv, single_env()
        oversubscribe = config.ranks > (os.cpu_count() or 1)
        return (mpirun_argv(config.ranks, argv, oversubscribe=oversubscribe),
                launcher_env({"PYTHONPATH": REPO}))

    # ---- running ----------------------------------------------------------------------------

    def start(self, config, seed):
        d = self.directory(config, seed)
        state = self.state(config, seed)
        if state == PARTIAL:
            shutil.rmtree(d)
        os.makedirs(d, exist_ok=True)
        cmd, env = self.command(config, seed, resume=state == STOPPED)
        log = open(os.path.join(d, "train.log"), "a")
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        log.close()
        return proc

    def finish(self, config, seed, code, seconds=None, cpu_s=None, estimate_s=None):
        """Records the run's timing (study.json) and a diverged run; returns its state."""
        d = self.directory(config, seed)
        # A study.json already there is an earlier part of this run (stopped, then resumed):
        # the run's time is the sum of its parts.
        before = _read_json(os.path.join(d, "study.json")) or {}
        parts = before.get("parts", 0) + 1
        seconds = (seconds or 0.0) + (before.get("seconds") or 0.0)
        cpu_s = (cpu_s or 0.0) + (before.get("cpu_s") or 0.0)
        with open(os.path.join(d, "study.json"), "w") as f:
            json.dump({"exit": code, "seconds": seconds, "cpu_s": cpu_s, "parts": parts,
                       "estimate_s": estimate_s, "load_end": os.getloadavg()[0]}, f)
        if code == 3:
            with open(os.path.join(self.directory(config, seed), "diverged.json"), "w") as f:
                json.dump({"exit": 3, "error": self.last_error(config, seed)}, f)
        return self.state(config, seed)

    def last_error(self, config, seed):
        try:
            with open(os.path.join(self.directory(config, seed), "train.log")) as f:
                lines = [l.strip() for l in f if l.strip()]
        except OSError:
            return None
        errors = [l for l in lines if "error" in l.lower() or "diverged" in l.lower()]
        return (errors or lines or [None])[-1]

    def _on_signal(self, signum, frame):
        self.stop_signal = signum

    def run_all(self, runs, estimate=None):
        """Runs every (config, seed) of `runs` not finished yet; returns the number run."""
        estimate = estimate or (lambda c: 60.0)
        pending = [(c, s) for c, s in runs if self.state(c, s) not in (DONE, DIVERGED)]
        total, finished = len(pending), 0
        tries = {}
        running = {}  # Popen -> (config, seed, start time, slots)
        measured = [0.0, 0.0]  # seconds taken, seconds estimated (finished runs)
        old = {s: signal.signal(s, self._on_signal)
               for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            while (pending or running) and self.stop_signal is None:
                used = sum(slots for *_, slots in running.values())
                while pending and self.stop_signal is None:
                    config, seed = pending[0]
                    slots = self.jobs if config.ranks > 1 else 1
                    if used + slots > self.jobs:
                        break
                    pending.pop(0)
                    running[self.start(config, seed)] = (config, seed, time.time(), slots)
                    used += slots
                time.sleep(0.5)
                for proc in [p for p in running if reap(p) is not None]:
                    config, seed, began, _ = running.pop(proc)
                    seconds = time.time() - began
                    state = self.finish(config, seed, proc.returncode, seconds, proc.cpu_s,
                                        estimate(config))
                    if state in (DONE, DIVERGED):
                        finished += 1
                        measured[0] += seconds
                        measured[1] += estimate(config)
                        left = self.remaining(pending, running, estimate, measured)
                        self.say(self.progress(config, seed, state, seconds, proc.cpu_s,
                                               finished, total, left))
                    elif self.stop_signal is None:
                        tries[config, seed] = tries.get((config, seed), 0) + 1
                        error = self.last_error(config, seed)
                        if proc.returncode != 2 and tries[config, seed] <= RETRIES:
                            self.say(f"{config.name()} seed {seed}: exit {proc.returncode} "
                                     f"({error}); trying again")
                            pending.insert(0, (config, seed))
                        else:
                            self.failed.append((config, seed, proc.returncode, error))
                            self.say(f"{config.name()} seed {seed}: FAILED, exit "
                                     f"{proc.returncode} ({error}); see its train.log")
                self.check_timeouts(running, estimate)
            if self.stop_signal is not None:
                self.stop_all(running)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        return finished

    def check_timeouts(self, running, estimate):
        for proc, (config, seed, began, _) in running.items():
            limit = self.timeout_s or max(900.0, 8 * estimate(config))
            if time.time() - began > limit and not getattr(proc, "timed_out", False):
                self.say(f"{config.name()} seed {seed}: over {limit:.0f} s, stopping it")
                proc.timed_out = True
                proc.terminate()

    def stop_all(self, running):
        name = signal.Signals(self.stop_signal).name
        self.say(f"{name}: stopping {len(running)} run(s) after their checkpoint; run the "
                 "same command again to continue")
        for proc in running:
            proc.terminate()  # one SIGTERM: launch.train checkpoints and stops cleanly
        deadline = time.time() + 120
        for proc, (config, seed, began, _) in running.items():
            while reap(proc) is None and time.time() < deadline:
                time.sleep(0.5)
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            else:  # stopped (its time so far, for the sum) or finished meanwhile
                self.finish(config, seed, proc.returncode, time.time() - began,
                            getattr(proc, "cpu_s", None))

    # ---- progress ---------------------------------------------------------------------------

    def remaining(self, pending, running, estimate, measured):
        factor = measured[0] / measured[1] if measured[1] else 1.0
        single = sum(estimate(c) for c, _ in pending if c.ranks == 1)
        multi = sum(estimate(c) for c, _ in pending if c.ranks > 1)
        now = sum(max(0.0, estimate(c) * factor - (time.time() - t))
                  for c, _, t, _ in running.values())
        return factor * (single / self.jobs + multi) + now / self.jobs

    def progress(self, config, seed, state, seconds, cpu_s, finished, total, left):
        row = _read_json(os.path.join(self.directory(config, seed), "summary.json")) or {}
        acc = "diverged" if state == DIVERGED else \
            f"test {row.get('test_acc', 0):.4f} val {row.get('val_acc') or 0:.4f}"
        return (f"[{finished}/{total}] {config.name()} seed {seed}: {acc} in {seconds:.0f} s "
                f"({cpu_s:.0f} s CPU); about {left / 60:.0f} min left")
