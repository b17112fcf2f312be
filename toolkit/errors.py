"""How a failed run ends: one `error:` line from the rank that knows the cause, its exit code,
no traceback (docs/faults.md has the table of faults and outcomes).

Exit codes: 2 bad input or a file that cannot be read or written, 3 training diverged,
4 a collective stalled or failed, 1 anything unforeseen (a bug: the line says so and
`--debug` shows the traceback).

Who prints:
- a cause found by this rank itself (bad data, a full disk, NaN) is printed at once, with a
  `rank k:` prefix off rank 0;
- a bad input found during set-up is found by every rank alike, so rank 0 prints it; a
  rank k != 0 waits a few seconds first and prints it only if the job is still alive, i.e.
  when rank 0 did not fail the same way (a file that only this rank's node cannot read);
- a failed collective is usually the echo of another rank's failure: the rank waits a few
  seconds and stays quiet if the launcher tears the job down meanwhile (it sends SIGCONT
  then SIGTERM to the survivors), so the user sees the cause, not its echoes.

Whoever leaves does so with os._exit: other ranks may be blocked in a collective, and
Horovod's shutdown at interpreter exit would wait for them.
"""
import os
import signal
import sys
import time
import traceback

BAD_INPUT, DIVERGED, COMMUNICATION, UNFORESEEN = 2, 3, 4, 1
ECHO_GRACE_S = 5.0


def echo_grace_s(env=os.environ):
    """How long a rank waits before reporting what may be an echo: longer than mpirun's
    delay between its SIGCONT and its SIGTERM (odls_base_sigkill_timeout), so that a rank
    that missed the SIGCONT (it was frozen) still hears the SIGTERM."""
    raw = env.get("OMPI_MCA_odls_base_sigkill_timeout", "")
    return max(ECHO_GRACE_S, float(raw) + 2.0) if raw.isdigit() else ECHO_GRACE_S


def _is_horovod_error(exc):
    return type(exc).__module__.startswith("horovod") or \
        type(exc).__name__ in ("HorovodInternalError", "HostsUpdatedInterrupt")


def classify(exc):
    """(exit code, is this rank's own cause) for an exception that ended the run."""
    from toolkit.job import LaunchError
    from toolkit.strategies import CommunicationError
    from toolkit.train import Diverged

    if isinstance(exc, Diverged):
        return DIVERGED, True
    if isinstance(exc, CommunicationError) or _is_horovod_error(exc):
        return COMMUNICATION, False
    if isinstance(exc, (LaunchError, ValueError, OSError)):
        return BAD_INPUT, True
    return UNFORESEEN, True


def message(exc, code):
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    if code == UNFORESEEN:
        return (f"unexpected {type(exc).__name__}: {text} (a bug; run with --debug for the "
                f"traceback and report it)")
    if code == COMMUNICATION and _is_horovod_error(exc):
        return f"communication failed: {text}"
    return text


def _quiet_exit_on_teardown(code):
    """While waiting, a SIGCONT or SIGTERM means the launcher is ending the job because
    another rank failed first (and said why): leave without a line."""
    def leave(signum, frame):
        os._exit(code)
    for sig in (signal.SIGCONT, signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, leave)


def _print_line(line):
    sys.stdout.flush()
    os.write(2, (line + "\n").encode())


def report_and_exit(exc, rank, *, during_setup, debug=False, grace_s=None):
    """Print the one line (or nothing, see the module docstring) and leave with the code."""
    from toolkit import preemption
    code, own_cause = classify(exc)
    where = f"rank {rank}: " if rank else ""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    maybe_echo = not own_cause or (during_setup and rank != 0 and code == BAD_INPUT)
    if maybe_echo:
        if preemption.ended_by_launcher():
            os._exit(code)  # the launcher is already ending the job: another rank spoke
        _quiet_exit_on_teardown(code)
        time.sleep(echo_grace_s() if grace_s is None else grace_s)
    _print_line(f"error: {where}{message(exc, code)}")
    os._exit(code)


def single_rank_setup_error(exc, rank):
    """Problems found before Horovod starts (the options): rank 0 says it, others leave."""
    if rank == 0:
        _print_line(f"error: {message(exc, BAD_INPUT)}")
    sys.exit(BAD_INPUT)
