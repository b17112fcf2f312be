"""The two reference strategies: `none` (every rank alone) and `sync` (Horovod's
DistributedOptimizer, gradient allreduce overlapped with the backward pass)."""
import time

from .base import Strategy
from .watchdog import CommunicationError, poll_until_done


def first_line(exc):
    """Horovod's messages span many lines; the error line keeps the first."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class NoCommunication(Strategy):
    """Every rank trains alone: the compute-only floor. synchronize_model() still averages,
    so evaluation and checkpoints see one model (the average of the ranks')."""

    name = "none"
    about = ("ranks train independently (models averaged only at evaluation and "
             "checkpoints)")

    def step(self):
        self.optimizer.step()
        self.steps_done += 1


class SyncSGD(Strategy):
    """Synchronous data parallelism: gradients averaged by Horovod before every update.

    `.optimizer` is Horovod's DistributedOptimizer wrapping the given optimizer (same
    param_groups, so learning-rate schedules keep working on it)."""

    name = "sync"
    about = "Horovod DistributedOptimizer"

    def __init__(self, model, optimizer):
        super().__init__(model, optimizer)
        self.optimizer = self._hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), op=self._hvd.Average)

    def step(self):
        # The backward hooks started one allreduce per gradient. Horovod's synchronize()
        # would block forever on a stalled rank, so first poll them with a deadline, then
        # let the wrapped optimizer collect the (finished) results.
        start = time.perf_counter()
        try:
            for handle, _ctx in list(self.optimizer._handles.values()):
                if handle is not None and not callable(handle):
                    poll_until_done(handle, name="sync.gradients", step=self.steps_done,
                                    timeout_s=self.timeout_s, rank=self.rank)
            try:
                self.optimizer.synchronize()
            except Exception as exc:  # HorovodInternalError: a peer is gone
                raise CommunicationError(f"sync: gradient allreduce failed at step "
                                         f"{self.steps_done} on rank {self.rank}: "
                                         f"{first_line(exc)}") from exc
        finally:
            self.comm_wait_s += time.perf_counter() - start
        with self.optimizer.skip_synchronize():
            self.optimizer.step()
        self.steps_done += 1
