"""Plan and submit a scaling sweep: one SLURM job per (mode, strategy, worker count).

Weak scaling keeps the batch per rank fixed (the global batch grows with the workers);
strong scaling keeps the global batch fixed (batch per rank = global / workers). Every job
gets its own run directory OUT/<mode>-<strategy>-n<workers> holding scaling.json (what the
sweep asked for, read back by the report), the job log and what launch.train writes.
"""
import json
import math
import os
import shlex
from dataclasses import asdict, dataclass, field

from toolkit.scaling.slurm_jobs import TERMINAL_STATES, job_state, submit

MODES = ("weak", "strong")
LAUNCHERS = ("srun", "mpirun")
# Set per job by the sweep; passing them as training arguments would contradict the plan.
RESERVED_TRAIN_ARGS = ("--strategy", "--batch-size", "--out")
MARKER = "scaling.json"


@dataclass
class SweepConfig:
    workers: list
    modes: list = field(default_factory=lambda: list(MODES))
    strategies: list = field(default_factory=lambda: ["sync", "dasgd"])
    batch_size: int = 32            # per rank (weak); per rank of the largest job (strong)
    global_batch: int = None        # strong scaling; default batch_size * max(workers)
    out: str = "runs/scaling"
    launcher: str = "srun"
    ntasks_per_node: int = None
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    time: str = None
    partition: str = None
    account: str = None
    sbatch_args: list = field(default_factory=list)
    template: str = None            # default: default_template()
    train_args: list = field(default_factory=list)


@dataclass
class PlannedJob:
    mode: str
    strategy: str
    workers: int
    batch_per_rank: int
    global_batch: int
    run_dir: str
    argv: list                      # the full sbatch command line


def toolkit_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_template():
    """slurm/train.sbatch of the source checkout this toolkit runs from. An installed toolkit
    has no slurm/ (it is not a package): then the user names the file with --template."""
    path = os.path.join(toolkit_root(), "slurm", "train.sbatch")
    if not os.path.isfile(path):
        raise ValueError("no default sbatch template (slurm/train.sbatch is in the source "
                         "checkout, not in an installed toolkit): pass --template FILE")
    return path


def _positive(name, value):
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def validate(cfg):
    """Raise ValueError (one line, naming the problem) for an inconsistent sweep."""
    if not cfg.workers:
        raise ValueError("--workers is empty: give worker counts like 1,2,4,8")
    for n in cfg.workers:
        _positive("every --workers entry", n)
    if len(set(cfg.workers)) != len(cfg.workers):
        raise ValueError(f"--workers has duplicates: {cfg.workers}")
    for m in cfg.modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r} in --modes (choose from {', '.join(MODES)})")
    from toolkit.strategies import STRATEGY_NAMES
    for s in cfg.strategies:
        if s not in STRATEGY_NAMES:
            raise ValueError(f"unknown strategy {s!r} in --strategies "
                             f"(choose from {', '.join(STRATEGY_NAMES)})")
    if cfg.launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {cfg.launcher!r} (choose from {', '.join(LAUNCHERS)})")
    _positive("--batch-size", cfg.batch_size)
    _positive("--cpus-per-task", cfg.cpus_per_task)
    if cfg.ntasks_per_node is not None:
        _positive("--ntasks-per-node", cfg.ntasks_per_node)
    if "strong" in cfg.modes:
        g = strong_global_batch(cfg)
        _positive("--global-batch", g)
        bad = [n for n in cfg.workers if g % n]
        if bad:
            raise ValueError(f"--global-batch {g} is not divisible by worker count(s) "
                             f"{bad}: strong scaling needs an equal batch per rank")
    for arg in cfg.train_args:
        if arg.split("=")[0] in RESERVED_TRAIN_ARGS:
            raise ValueError(f"training argument {arg.split('=')[0]} is set by the sweep per "
                             f"job; use the sweep options instead")
    template = cfg.template or default_template()
    if not os.path.isfile(template):
        raise ValueError(f"sbatch template not found: {template}")


def strong_global_batch(cfg):
    return cfg.global_batch if cfg.global_batch is not None else cfg.batch_size * max(cfg.workers)


def sbatch_argv(cfg, *, workers, job_name, run_dir, train_args):
    """The sbatch command line of one job (absolute paths, so it runs from anywhere)."""
    root = toolkit_root()
    argv = ["sbatch", f"--job-name={job_name}", f"--ntasks={workers}",
            f"--cpus-per-task={cfg.cpus_per_task}",
            f"--output={os.path.join(run_dir, 'slurm-%j.out')}"]
    if cfg.ntasks_per_node:
        per_node = min(cfg.ntasks_per_node, workers)
        argv += [f"--nodes={math.ceil(workers / per_node)}", f"--ntasks-per-node={per_node}"]
    if cfg.gpus_per_task:
        argv.append(f"--gpus-per-task={cfg.gpus_per_task}")
    for flag, value in (("--time", cfg.time), ("--partition", cfg.partition),
                        ("--account", cfg.account)):
        if value:
            argv.append(f"{flag}={value}")
    argv += list(cfg.sbatch_args)
    argv.append(f"--export=ALL,TOOLKIT_LAUNCHER={cfg.launcher},TOOLKIT_ROOT={root}")
    argv.append(cfg.template or default_template())
    return argv + list(train_args)


def plan(cfg):
    """All jobs of the sweep, in submission order: fewest workers first, so that small jobs
    are not queued behind big ones (FIFO schedulers) and can share nodes meanwhile."""
    validate(cfg)
    out = os.path.abspath(cfg.out)
    jobs = []
    for n in sorted(cfg.workers):
        for mode in cfg.modes:
            for strategy in cfg.strategies:
                per_rank = cfg.batch_size if mode == "weak" else strong_global_batch(cfg) // n
                run_dir = os.path.join(out, f"{mode}-{strategy}-n{n}")
                train = [*cfg.train_args, "--strategy", strategy, "--batch-size", str(per_rank),
                         "--out", run_dir]
                argv = sbatch_argv(cfg, workers=n, job_name=f"scal-{mode}-{strategy}-n{n}",
                                   run_dir=run_dir, train_args=train)
                jobs.append(PlannedJob(mode, strategy, n, per_rank, per_rank * n, run_dir, argv))
    return jobs


def format_command(argv):
    return " ".join(shlex.quote(a) for a in argv)


def _run_status(run_dir, env=None):
    """finished | active (its job is still queued or running) | resume | fresh."""
    summary = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            if not json.load(f).get("stopped_by"):  # a preempted run wrote one too
                return "finished"
    marker = os.path.join(run_dir, MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            job_id = json.load(f).get("job_id")
        if job_id:
            state, _ = job_state(job_id, env=env)
            if state not in TERMINAL_STATES and state != "UNKNOWN":
                return "active"
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(ckpt_dir) and any(n.startswith("ckpt-") for n in os.listdir(ckpt_dir)):
        return "resume"
    return "fresh"


def submit_all(jobs, *, env=None, log=print):
    """Submit every planned job whose run is not finished and not still queued or running.

    Returns [(job, job_id)] of the submitted ones. A finished run is never overwritten; a
    run that failed, timed out or was preempted after a checkpoint is resubmitted with
    --resume, so re-running the sweep completes it."""
    submitted = []
    for job in jobs:
        status = _run_status(job.run_dir, env)
        if status == "finished":
            log(f"skip {job.run_dir}: finished (summary.json)")
            continue
        if status == "active":
            log(f"skip {job.run_dir}: its job is still queued or running")
            continue
        argv = job.argv + (["--resume"] if status == "resume" else [])
        os.makedirs(job.run_dir, exist_ok=True)
        job_id = submit(argv, cwd=toolkit_root(), env=env)
        record = {k: v for k, v in asdict(job).items() if k != "argv"}
        record.update(job_id=job_id, command=format_command(argv))
        with open(os.path.join(job.run_dir, MARKER), "w") as f:
            json.dump(record, f, indent=2)
        log(f"submitted job {job_id}: {job.mode} {job.strategy} n={job.workers} "
            f"batch/rank={job.batch_per_rank}{' (resuming)' if status == 'resume' else ''} "
            f"-> {job.run_dir}")
        submitted.append((job, job_id))
    return submitted
