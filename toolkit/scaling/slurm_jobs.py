"""Submit SLURM batch jobs and wait for them, with the plain client commands.

Works without SLURM accounting (no slurmdbd): the state comes from `scontrol show job`,
which the controller answers for MinJobAge seconds after the end; `sacct` is the fallback
for jobs the controller has already forgotten.
"""
import re
import subprocess
import time

# States after which a job never changes again (squeue(1) "JOB STATE CODES").
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                   "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


class SlurmError(RuntimeError):
    """A SLURM client command failed; the message carries its stderr."""


def submit(argv, *, cwd=None, env=None):
    """Run `sbatch --parsable ...` (argv starts with "sbatch") and return the job id."""
    if not argv or argv[0] != "sbatch":
        raise ValueError(f"submit() expects an sbatch command line, got {argv[:1]}")
    cmd = [argv[0], "--parsable", *argv[1:]]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
    # --parsable prints "jobid" or "jobid;cluster".
    return proc.stdout.strip().split(";")[0]


def job_state(job_id, *, env=None):
    """(state, exit_code) of a job, e.g. ("COMPLETED", "0:0"); ("UNKNOWN", "") if SLURM
    no longer knows it."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], env=env,
                          capture_output=True, text=True)
    if proc.returncode == 0 and "JobState=" in proc.stdout:
        state = re.search(r"\bJobState=(\S+)", proc.stdout).group(1)
        code = re.search(r"\bExitCode=(\S+)", proc.stdout)
        return state, code.group(1) if code else ""
    proc = subprocess.run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State,ExitCode"],
                          env=env, capture_output=True, text=True)
    line = proc.stdout.strip().splitlines()[:1] if proc.returncode == 0 else []
    if line:
        state, _, code = line[0].partition("|")
        return state.split()[0], code
    return "UNKNOWN", ""


def wait_for_jobs(job_ids, *, timeout, env=None, poll_s=2.0, on_change=None):
    """Block until every job is in a terminal state; return {job_id: (state, exit_code)}.

    Raises TimeoutError naming the unfinished jobs after `timeout` seconds (the jobs keep
    running: cancelling them is the caller's decision)."""
    pending = [str(j) for j in job_ids]
    final, last = {}, {}
    deadline = time.monotonic() + timeout
    while pending:
        for job in list(pending):
            state, code = job_state(job, env=env)
            if on_change and last.get(job) != state:
                on_change(job, state)
            last[job] = state
            if state in TERMINAL_STATES or state == "UNKNOWN":
                final[job] = (state, code)
                pending.remove(job)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"SLURM jobs still not finished after {timeout:.0f}s: "
                               + ", ".join(f"{j} ({last[j]})" for j in pending))
        time.sleep(poll_s)
    return final
