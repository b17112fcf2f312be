"""Waiting on Horovod handles with a deadline, so a stall becomes an error naming the step.

Horovod never fails a collective that some rank did not submit (a different name, a skipped
step, a dead peer under some launchers): it waits, printing a stall warning every
HOROVOD_STALL_CHECK_TIME_SECONDS. Training code must not hang silently, so every wait in the
strategies polls the handle and raises RuntimeError after a deadline.
"""
import time

from toolkit.job.startup import COMM_TIMEOUT_ENV


class CommunicationError(RuntimeError):
    """A collective stalled or failed; the message names the collective and the step."""


def poll_until_done(handle, *, name, step, timeout_s, rank):
    """Return once hvd.poll(handle) is true; RuntimeError naming the step after the deadline.

    Polls instead of blocking in synchronize so that a stall can be turned into an error.
    The sleep grows from 0.1 ms to 2 ms: a handle that completes while we look costs
    almost nothing, a long wait costs almost no CPU (the compute threads need the cores).
    """
    import horovod.torch as hvd

    start = time.monotonic()
    pause = 1e-4
    while not hvd.poll(handle):
        waited = time.monotonic() - start
        if waited > timeout_s:
            where = "" if step is None else f" at step {step}"
            raise CommunicationError(
                f"collective {name!r} stalled{where}: rank {rank} waited "
                f"{waited:.0f} s (> {COMM_TIMEOUT_ENV}={timeout_s:g}) for it; another rank "
                f"submitted a different collective, skipped a step or died")
        time.sleep(pause)
        pause = min(pause * 1.5, 2e-3)


def wait_handle(handle, *, name, step, timeout_s, rank):
    """hvd.synchronize(handle) with a deadline; returns the operation's output."""
    import horovod.torch as hvd

    poll_until_done(handle, name=name, step=step, timeout_s=timeout_s, rank=rank)
    try:
        return hvd.synchronize(handle)
    except Exception as exc:  # HorovodInternalError: peer gone or Horovod shut down
        where = "" if step is None else f" at step {step}"
        raise CommunicationError(f"collective {name!r} failed{where} on rank {rank}: "
                                 f"{exc}".strip()) from exc


def wait_with_deadline(handle, *, name, step=None):
    """wait_handle() with this job's deadline (TOOLKIT_COMM_TIMEOUT_S), for the blocking
    collectives outside the strategies (the stop vote, evaluation sums): a frozen peer must
    end the run there as well, not leave it waiting for Horovod's own shutdown."""
    import horovod.torch as hvd
    from toolkit.job.startup import comm_timeout_s

    return wait_handle(handle, name=name, step=step, timeout_s=comm_timeout_s(),
                       rank=hvd.rank())
