"""Where this process is in the job: Horovod start-up (`init`, see startup.py), the launch
checks that catch a mis-launched job, and rank-0 output."""
import os
import sys
from dataclasses import dataclass

from .startup import init_horovod


class LaunchError(RuntimeError):
    """The job was started in a way that cannot work (message says how to fix it)."""


@dataclass(frozen=True)
class Dist:
    rank: int
    size: int
    local_rank: int
    local_size: int
    launcher: str

    @property
    def is_root(self):
        return self.rank == 0


def launcher_rank(env=os.environ):
    """This process's rank as the launcher announced it (usable before or without
    hvd.init(), e.g. while reporting an error); 0 without a launcher."""
    for var in ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        value = env.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def detect_launcher(env=os.environ):
    """Which launcher started this process, judged from the variables it sets."""
    if "HOROVOD_GLOO_RENDEZVOUS_ADDR" in env:
        return "horovodrun-gloo"
    if "OMPI_COMM_WORLD_SIZE" in env:
        return "mpirun"
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        return "srun"
    return "single"


def expected_size(env=os.environ):
    """(variable, size) the launcher promised, or None when nothing promised a size.

    Read before hvd.init(): Open MPI's singleton start sets OMPI_COMM_WORLD_SIZE=1 itself.
    Open MPI's mpirun inside a SLURM job starts its daemons with srun, so SLURM step
    variables describe the daemons there: the Open MPI variable wins when both are set.
    """
    for var in ("OMPI_COMM_WORLD_SIZE", "HOROVOD_SIZE"):
        if var in env:
            return var, int(env[var])
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        for var in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
            if var in env:
                return var, int(env[var])
    return None


def check_size(actual, promised):
    if promised is not None and promised[1] != actual:
        var, n = promised
        raise LaunchError(
            f"Horovod sees {actual} rank(s) but {var}={n}: the launcher started independent "
            f"single-rank copies. Under SLURM use `srun --mpi=pmix` (check `srun --mpi=list`) "
            f"or mpirun/horovodrun inside the allocation.")


def init(strategy=None, delay=1):
    """hvd.init() plus the size check; returns this process's place in the job.
    `strategy` (a strategy name) and its `delay` let Horovod's cycle time suit it."""
    promised = expected_size()
    launcher = detect_launcher()
    hvd = init_horovod(strategy, delay)
    check_size(hvd.size(), promised)
    return Dist(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(),
                local_size=hvd.local_size(), launcher=launcher)


def allreduce_sum(tensor, name, step=None):
    """Blocking sum over ranks (evaluation counts, epoch statistics), with the job's
    communication deadline: a frozen peer ends the run with exit 4 naming `name`."""
    import horovod.torch as hvd
    from toolkit.strategies.watchdog import wait_with_deadline
    handle = hvd.allreduce_async(tensor, op=hvd.Sum, name=name)
    return wait_with_deadline(handle, name=name, step=step)


def line_print(*args, sep=" ", file=None):
    """One line in ONE write, flushed.  horovodrun runs Python unbuffered and mpirun tags
    every chunk it forwards with `[1,0]<stdout>:`, so print()'s separate writes of the text
    and of its newline would split a line in the job log."""
    stream = file or sys.stdout
    stream.write(sep.join(str(a) for a in args) + "\n")
    stream.flush()


def root_print(ctx, *args, sep=" ", file=None):
    """A line on rank 0 only (job logs are pipes, not terminals)."""
    if ctx.is_root:
        line_print(*args, sep=sep, file=file)


def fail(message, code=2):
    """One clear line on stderr and exit: for bad input that every rank detects alike."""
    line_print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
