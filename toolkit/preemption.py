"""Clean stops on SIGTERM / SIGUSR1 / SIGINT (SLURM preemption, time limits, Ctrl-C, `timeout`).

A signal only sets a flag. Ranks may see it at different steps, and a checkpoint needs
collectives that every rank enters at the same step, so the ranks vote: each step every
rank starts a non-blocking sum of its flag and reads the previous step's result, so all
ranks learn the decision at the same step, one step after the first of them saw the signal,
without putting a blocking collective on the critical path.

install() is called first thing in launch.train, before torch is imported: a stop signal
that arrives while Python starts is remembered, not fatal. A second SIGINT (Ctrl-C twice)
leaves at once, without a checkpoint.

This module imports no torch at import time, so installing the handlers costs nothing.
"""
import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
INTERRUPTED_TWICE_EXIT = 130


class PreemptionFlag:
    """Remembers the first stop request: a signal, or a reason given by request()."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signal_name = None
        self.by_program = False  # request() rather than a signal
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            # Ctrl-C twice: the user does not want to wait for the checkpoint.
            os.write(2, b"error: interrupted twice: stopped without a checkpoint\n")
            os._exit(INTERRUPTED_TWICE_EXIT)
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def request(self, reason):
        """A stop asked for by the program itself (e.g. the launcher is gone)."""
        if self.signal_name is None:
            self.signal_name = reason
            self.by_program = True

    @property
    def requested(self):
        return self.signal_name is not None


_flag = None


def install():
    """The process-wide flag, created (and the handlers installed) on first call."""
    global _flag
    if _flag is None:
        _flag = PreemptionFlag()
    return _flag


def finished():
    """The run is over (its last checkpoint and summary written): from here on a SIGUSR1,
    the stop warning that schedulers and train.sbatch send, has nothing left to stop. It is
    ignored rather than left to Python's shutdown, which restores the default action (end
    the process) before the process is gone: a warning that lands then would turn a finished
    run's exit status into "killed by SIGUSR1" (138 under srun). SIGTERM and SIGINT keep
    ending the process."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def ended_by_launcher():
    """True when the stop was asked for by the orphan watch (the launcher is gone or is
    ending the job), not by a signal to this rank."""
    return _flag is not None and _flag.by_program


class StopVote:
    """Each step every rank submits [signalled, asked by the program] (e.g. its launcher
    is gone) and reads the previous step's sums."""

    NAME = "train.stopvote"

    def __init__(self):
        self.handle = None
        self.step = None  # the step whose vote is in flight (named if it stalls)
        self.stop = False
        self.remote_reason = None  # why, as far as a rank that saw nothing can tell

    def decide(self, flag, step=None):
        """Submit this step's flag; True once any rank raised it in an earlier step."""
        import horovod.torch as hvd
        import torch
        self.drain()
        if not self.stop:
            by_program = bool(flag and _flag is not None and _flag.by_program)
            vote = [1.0 if flag and not by_program else 0.0, 1.0 if by_program else 0.0]
            self.handle = hvd.allreduce_async(torch.tensor(vote), op=hvd.Sum, name=self.NAME)
            self.step = step
        return self.stop

    def drain(self):
        """Wait for the vote in flight (before other blocking collectives); the decision
        it carries is kept for the next decide()."""
        from toolkit.strategies.watchdog import wait_with_deadline
        if self.handle is not None:
            handle, self.handle = self.handle, None
            # A frozen peer that never submitted this vote ends the run after the job's
            # deadline, like a stalled gradient (it may freeze between the two).
            signalled, by_program = wait_with_deadline(handle, name=self.NAME,
                                                       step=self.step).tolist()
            if not self.stop and (signalled or by_program):
                self.stop = True
                self.remote_reason = ("a signal on another rank" if signalled else
                                      "the exit of another rank's launcher")
