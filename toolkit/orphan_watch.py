"""Ranks notice when the process that launched them is gone, and stop cleanly.

Signals do not always reach the ranks. `horovodrun` runs `/bin/sh -c "mpirun ..."` in its
own process: a SIGTERM to horovodrun (or `timeout ... horovodrun`) ends that shell, while
mpirun and the ranks would keep training. And when mpirun, orted or slurmstepd is killed
outright, its ranks are re-parented and nobody will ever stop them.

So every rank started by a launcher runs a small thread that checks twice a second:
- that its parent is still the process that started it (mpirun, orted, slurmstepd, the
  horovodrun shell for Gloo), and
- under horovodrun over MPI, that horovodrun's shell is still alive and still mpirun's
  parent.
When either fails, the thread raises the same stop request a SIGTERM would: the ranks agree
on a step, write one checkpoint and exit.

A launcher that ends a job sends its ranks SIGCONT first (mpirun and orted on SIGTERM or
SIGINT, srun's and slurmstepd's kill sequences), then SIGTERM after a delay (mpirun:
odls_base_sigkill_timeout), then SIGKILL. A SIGCONT that reaches a rank which was not
stopped is therefore taken as the first stop request: the ranks use the whole delay for
their checkpoint instead of waiting for the SIGTERM. A rank that really was stopped
(SIGSTOP, a suspended SLURM job) sees the thread's clock jump and ignores the SIGCONT
that resumes it. If that cannot finish within a grace period (the
other ranks are gone too), the rank leaves on its own with one line, so nothing is left
behind. A single process without a launcher is never watched: a shell that exits under a
`nohup python -m launch.train &` is not a reason to stop.

One launch cannot stop cleanly whatever the ranks do: a plain `timeout DURATION mpirun ...`
signals mpirun twice, and Open MPI's mpirun then exits at once, taking the ranks with it.
Rank 0 names it in a warning at the start.
"""
import os
import signal
import threading
import time

GRACE_ENV = "TOOLKIT_ORPHAN_GRACE_S"
DEFAULT_GRACE_S = 60.0
ORPHAN_EXIT = 4


def _stat_fields(pid):
    """(command name, parent pid) of a live process from /proc, or None when it is gone
    (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    name = raw[raw.index("(") + 1:raw.rindex(")")]
    state, ppid = raw[raw.rindex(")") + 2:].split()[:2]
    if state in ("Z", "X"):
        return None
    return name, int(ppid)


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def horovodrun_shell(launcher_pid):
    """The pid of horovodrun's `/bin/sh -c "mpirun ..."` when it is `launcher_pid`'s
    parent, else None. horovodrun replaces itself with that shell, so it is what the user
    signals (and `timeout` kills) when stopping horovodrun."""
    fields = _stat_fields(launcher_pid)
    if fields is None:
        return None
    shell = fields[1]
    argv = _cmdline(shell)
    if len(argv) >= 3 and os.path.basename(argv[0]) in ("sh", "dash", "bash") \
            and argv[1] == "-c" and argv[2].lstrip().startswith("mpirun "):
        return shell
    return None


# Open MPI 4's mpirun ends the job on the first of these, and exits at once, leaving the ranks
# no time for their stop checkpoint, when a second one arrives within 5 s.
MPIRUN_ABORT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _signal_named(text):
    """signal.Signals for `timeout -s` values such as TERM, SIGUSR1 or 15; None if unknown."""
    name = text.upper()
    try:
        return signal.Signals(int(name)) if name.isdigit() else \
            signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        return None


# timeout's long options by the letter of their short form.
_TIMEOUT_LONG_OPTIONS = {"--foreground": "f", "--signal": "s", "--kill-after": "k",
                         "--preserve-status": "p", "--verbose": "v"}


def _timeout_options(args):
    """(letter, value) for each option before timeout's DURATION (value "" for a flag)."""
    while args and args[0].startswith("-") and args[0] != "-":
        opt = args.pop(0)
        if opt == "--":
            return
        if opt.startswith("--"):  # getopt takes any unambiguous prefix of a long option
            name, _, value = opt.partition("=")
            letter = next((short for long_name, short in _TIMEOUT_LONG_OPTIONS.items()
                           if long_name.startswith(name)), "?")
            if letter in ("s", "k") and not value:
                value = args.pop(0) if args else ""
            yield letter, value
            continue
        flags = opt[1:]  # short flags may be combined (-fs TERM) or joined to a value (-sTERM)
        while flags:
            letter, flags = flags[0], flags[1:]
            value = ""
            if letter in ("s", "k"):
                value, flags = flags or (args.pop(0) if args else ""), ""
            yield letter, value


def timeout_signal(argv):
    """(signal, foreground) of a GNU `timeout` command line, or None if argv is not one.
    Without --foreground, timeout sends its signal to the command and again to its own
    process group, which the command is in."""
    if not argv or os.path.basename(argv[0]) != "timeout":
        return None
    sig, foreground = "TERM", False
    for letter, value in _timeout_options(list(argv[1:])):
        if letter == "f":
            foreground = True
        elif letter == "s":
            sig = value
    return _signal_named(sig), foreground


def double_signal_warning(launcher_pid):
    """A one-line warning when this rank's mpirun runs directly under a `timeout` that will
    signal it twice with a signal that ends the job (docs/faults.md), else None."""
    fields = _stat_fields(launcher_pid)
    if fields is None or fields[0] not in ("mpirun", "mpiexec", "orterun"):
        return None
    sent = timeout_signal(_cmdline(fields[1]))
    if sent is None or sent[1] or sent[0] not in MPIRUN_ABORT_SIGNALS:
        return None
    return (f"warning: `timeout` will send {sent[0].name} to mpirun twice (directly and to its "
            f"process group); Open MPI's mpirun then exits at once and the ranks end without "
            f"their stop checkpoint: use `timeout -s USR1` or `timeout --foreground` "
            f"(docs/faults.md)")


def _silence_output():
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def grace_s(env=os.environ):
    raw = env.get(GRACE_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_GRACE_S
    except ValueError:
        raise ValueError(f"{GRACE_ENV} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{GRACE_ENV} must be > 0, got {raw!r}")
    return value


class LauncherWatch:
    """Watches this rank's launcher from a daemon thread; see the module docstring."""

    def __init__(self, flag, rank, interval_s=0.5, grace=None):
        self.flag = flag
        self.rank = rank
        self.interval_s = interval_s
        self.grace_s = grace_s() if grace is None else grace
        self.launcher_pid = os.getppid()
        fields = _stat_fields(self.launcher_pid)
        self.launcher_name = fields[0] if fields else "the launcher"
        self.shell_pid = horovodrun_shell(self.launcher_pid)
        self.gone = None
        self.last_tick = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="orphan-watch", daemon=True)

    def start(self):
        """Start the thread and take SIGCONT (call from the main thread)."""
        signal.signal(signal.SIGCONT, self._on_continue)
        self._thread.start()
        return self

    def _on_continue(self, signum, frame):
        if time.monotonic() - self.last_tick < 3 * self.interval_s:
            self.flag.request("the launcher ending the job (SIGCONT)")

    def parent_gone(self):
        """True when the process that started this rank has exited (not only horovodrun's
        shell): nobody is left to finalise the job with."""
        return os.getppid() != self.launcher_pid

    def check(self):
        """A sentence naming what is gone, or None while the launcher is alive."""
        if os.getppid() != self.launcher_pid:
            return f"the exit of {self.launcher_name} (pid {self.launcher_pid})"
        if self.shell_pid is not None:
            fields = _stat_fields(self.launcher_pid)
            if _stat_fields(self.shell_pid) is None or (fields and fields[1] != self.shell_pid):
                return f"the exit of horovodrun (pid {self.shell_pid})"
        return None

    def _run(self):
        while self.gone is None:
            time.sleep(self.interval_s)
            self.last_tick = time.monotonic()
            self.gone = self.check()
        if self.parent_gone():
            # Our output went to the launcher, which is gone: writing would fail with a
            # broken pipe in the middle of the stop. summary.json still records it.
            _silence_output()
        self.flag.request(self.gone)
        # The other ranks should notice too and vote to stop; if they cannot (they died
        # with the launcher), leave rather than linger as an orphan.
        time.sleep(self.grace_s)
        where = f"rank {self.rank}: " if self.rank else ""
        os.write(2, f"error: {where}stopped without a checkpoint: {self.gone} and the "
                    f"ranks could not agree on a stop within {self.grace_s:g} s "
                    f"({GRACE_ENV})\n".encode())
        os._exit(ORPHAN_EXIT)


def watch(flag, launcher, rank):
    """Start watching when a launcher started this process ("single" is not watched).
    Rank 0 also warns about a launch that cannot stop cleanly."""
    if launcher == "single":
        return None
    watcher = LauncherWatch(flag, rank).start()
    warning = double_signal_warning(watcher.launcher_pid) if rank == 0 else None
    if warning:
        os.write(2, (warning + "\n").encode())
    return watcher
