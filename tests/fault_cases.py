"""The faults the tests inject and the outcome each must have.

tests/test_faults_*.py and tests/test_slurm.py run every case for real; docs/faults.md's
table is generated from this list (`python -m tests.fault_cases --write` rewrites it, without
--write the table is printed) and tests/test_faults_table.py checks that the two agree, so
the table never promises more than the tests show.
"""
import os
import re
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    id: str          # the pytest parameter / test name that runs it
    fault: str       # what is done to the job
    launcher: str
    exit_code: str   # what the user's command returns
    outcome: str     # the one line, the files, the processes


DISK = "full disk (tmpfs)"
NO_TRACE = "no traceback"

CASES = [
    Case("disk-checkpoint", f"{DISK} at the second checkpoint", "none, mpirun -np 2", "2",
         "`error: cannot write checkpoint PATH: No space left on device`; the first "
         "checkpoint loads; no temporary file; every rank gone"),
    Case("disk-metrics", f"{DISK} at the first metrics.jsonl record", "none", "2",
         "`error: cannot write metrics log PATH: No space left on device`; metrics.jsonl "
         "holds only whole records"),
    Case("disk-tensorboard", f"{DISK} at the first TensorBoard event (after the first "
         "metrics.jsonl record)", "none", "2",
         "`error: cannot write TensorBoard events PATH: No space left on device`; "
         "metrics.jsonl holds the record"),
    Case("disk-summary", f"{DISK} at summary.json", "none", "2",
         "`error: cannot write summary PATH: No space left on device`; the checkpoint loads; "
         "no summary.json, no summary.json.tmp"),
    Case("read-only-out", "--out on a read-only file system", "none", "2",
         "`error: --out PATH: ... is on a read-only file system`, before anything is written"),
    Case("data-rank1", "a truncated JPEG in rank 1's shard of an imagefolder", "horovodrun -np 2",
         "2", "`error: rank 1: imagefolder: cannot read image PATH (...)` only; every rank "
         "gone within 60 s"),
    Case("sync-stall", "rank 1 of a `--strategy sync` job frozen (SIGSTOP), "
         "TOOLKIT_COMM_TIMEOUT_S=5", "mpirun -np 2", "4",
         "`error: collective 'sync.gradients' stalled at step N: ...`, naming the collective "
         "the other rank waited on (the stop vote or an evaluation sum where the freeze lands "
         "between steps) and the step; every rank gone within 60 s"),
    Case("term-horovodrun", "SIGTERM to horovodrun", "horovodrun -np 2", "killed by the signal",
         "ranks stop at one step (`stopped by the exit of horovodrun ...`), one checkpoint of "
         "that step, every process gone"),
    Case("int-horovodrun", "Ctrl-C: SIGINT to horovodrun's process group (its shell alone "
         "ignores SIGINT)", "horovodrun -np 2", "killed by the signal once mpirun is gone, "
         "sometimes 1 (mpirun's, passed on by the shell)",
         "mpirun starts ending the job; the ranks take its SIGCONT as the stop request; as "
         "for SIGTERM"),
    Case("timeout-horovodrun", "`timeout DURATION horovodrun ...` expires", "horovodrun -np 2",
         "124",
         "as for SIGTERM"),
    Case("term-mpirun", "SIGTERM to mpirun", "mpirun -np 2", "1 (mpirun's own, every rank "
         "exits 0)",
         "`stopped by the launcher ending the job (SIGCONT) at step N`: mpirun sends SIGCONT "
         "at once, SIGTERM after odls_base_sigkill_timeout (10 s in the toolkit's Open MPI "
         "policy); one checkpoint of step N; every process gone"),
    Case("int-mpirun", "SIGINT to mpirun", "mpirun -np 2", "1 (as for SIGTERM)",
         "as for SIGTERM"),
    Case("timeout-mpirun", "`timeout -s USR1 DURATION mpirun ...` expires (timeout signals "
         "mpirun, then its process group)", "mpirun -np 2", "124",
         "as for SIGUSR1 to mpirun"),
    Case("usr1-mpirun", "SIGUSR1 to mpirun (forwarded at once)", "mpirun -np 2", "0",
         "`stopped by SIGUSR1 at step N`, one checkpoint of step N"),
    Case("late-usr1", "SIGUSR1 every millisecond from the moment summary.json exists until "
         "the process is gone (a stop warning that arrives as a finished run shuts down)",
         "none", "0", "the final line; the warning has nothing left to stop and is ignored "
         "(Python's shutdown would otherwise restore its default action: exit 138 under srun)"),
    Case("kill-mpirun", "SIGKILL to mpirun (the launcher dies)", "mpirun -np 2", "killed",
         "Open MPI ends the ranks as soon as their daemon is gone (no time for a stop "
         "checkpoint); the last checkpoint loads, no temporary file, every process gone"),
    Case("usr1-srun", "SIGUSR1 to srun (forwarded as it is)", "srun -n 2 --mpi=pmix", "0",
         "`stopped by SIGUSR1 at step N`, one checkpoint of step N, every rank gone"),
    Case("term-srun", "SIGTERM to srun (srun then cancels the step)", "srun -n 2 --mpi=pmix",
         "srun's (143 or 137)", "the ranks take the step's SIGCONT as their stop request and "
         "checkpoint if KillWait allows (5 s on the test cluster is too short under load); "
         "the newest checkpoint loads, no temporary file, every rank gone"),
    Case("timeout-srun", "`timeout DURATION srun ...` expires", "srun -n 2 --mpi=pmix", "124",
         "as for SIGTERM to srun"),
    Case("srun-mpi-none", "`TOOLKIT_SRUN_MPI=none` for a 2-task job (also `pmi2` with an "
         "Open MPI without PMI-2)", "sbatch, srun", "2 (FAILED)",
         "`train.sbatch: error: TOOLKIT_SRUN_MPI=none starts 2 independent single-rank jobs: "
         "...` as the log's last line, nothing started"),
    Case("sbatch-usr1-srun", "`scancel --batch --signal=USR1` (as `--signal=B:USR1@T` does)",
         "sbatch, srun", "0 (COMPLETED)",
         "log ends with the stop, final and `launcher exited with code 0` lines; checkpoint of "
         "the stop step"),
    Case("sbatch-usr1-mpirun", "`scancel --batch --signal=USR1`", "sbatch, mpirun",
         "0 (COMPLETED)", "as under srun"),
    Case("sbatch-time-limit", "`--time=2` (2 minutes) for a longer training", "sbatch, srun",
         "0 (COMPLETED)", "the job's own warning 30 s before the limit stops the ranks; log "
         "ends with the stop, final and exit lines"),
    Case("sbatch-early-signal", "SIGUSR1 while the job sets up (before the launch)",
         "sbatch, srun", "0 (COMPLETED)",
         "`stopped by SIGUSR1 before the training started`, then the exit line"),
]


def table(cases=CASES):
    rows = ["| case | fault injected | launcher | exit code | outcome |",
            "|---|---|---|---|---|"]
    rows += [f"| `{c.id}` | {c.fault} | {c.launcher} | {c.exit_code} | {c.outcome} |"
             for c in cases]
    return "\n".join(rows) + "\n"


def ids(prefix=""):
    return [c.id for c in CASES if c.id.startswith(prefix)]


DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "faults.md")
MARKERS = ("<!-- fault cases: begin -->\n", "<!-- fault cases: end -->")


def write_doc(path=DOC):
    with open(path) as f:
        text = f.read()
    begin, end = MARKERS
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} lacks the markers {begin.strip()} ... {end}")
    with open(path, "w") as f:
        f.write(pattern.sub(lambda _: begin + table() + end, text))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_doc()
    else:
        sys.stdout.write(table())
