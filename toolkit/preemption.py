"""Clean stops on SIGTERM / SIGUSR1 (SLURM preemption and time limits).

A signal only sets a flag. Ranks may see it at different steps, and a checkpoint needs
collectives that every rank enters at the same step, so the ranks vote: each step every
rank starts a non-blocking sum of its flag and reads the previous step's result, so all
ranks learn the decision at the same step, one step after the first of them saw the signal,
without putting a blocking collective on the critical path.
"""
import signal

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    def __init__(self, signals=STOP_SIGNALS):
        self.signal_name = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self):
        return self.signal_name is not None


class StopVote:
    NAME = "train.stopvote"

    def __init__(self):
        self.handle = None
        self.stop = False

    def decide(self, flag):
        """Submit this step's flag; True once any rank raised it in an earlier step."""
        import horovod.torch as hvd
        self.drain()
        if not self.stop:
            self.handle = hvd.allreduce_async(torch.tensor([1.0 if flag else 0.0]),
                                              op=hvd.Sum, name=self.NAME)
        return self.stop

    def drain(self):
        """Wait for the vote in flight (before other blocking collectives); the decision
        it carries is kept for the next decide()."""
        import horovod.torch as hvd
        if self.handle is not None:
            self.stop = self.stop or bool(hvd.synchronize(self.handle).item() > 0)
            self.handle = None
