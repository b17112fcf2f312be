"""The options launch.bench_comm, launch.bench_nodes and their per-rank worker
(experiments.bench.comm) share beyond training's: how a step computes, whether a loaded
machine may be measured, and the per-contender settings of the strategies taking turns."""
import os

from experiments.bench.device_time import parse_compute


def add_compute_option(p):
    p.add_argument("--compute", default="real", metavar="real|device:STEP_MS",
                   help="real: the model's forward/backward on this CPU; device:STEP_MS: each "
                        "step's forward/backward costs STEP_MS of emulated GPU time without "
                        "using the CPU, gradients fired layer by layer "
                        "(experiments/bench/device_time.py)")


def check_compute_option(p, args):
    """args.compute_s: None for real compute, else seconds of device time per step."""
    try:
        args.compute_s = parse_compute(args.compute)
    except ValueError as exc:
        p.error(str(exc))


def add_step_bench_options(p):
    """The options launch.bench_comm and launch.bench_nodes share beyond training's."""
    add_compute_option(p)
    p.add_argument("--allow-loaded", action="store_true",
                   help="measure even when other work loads the machine beyond its cores "
                        "(the results are then marked loaded); without it the benchmark "
                        "refuses to start (exit 3)")


def check_step_bench_options(p, args):
    """--compute parsed (bad input: one line, exit 2)."""
    check_compute_option(p, args)


def refuse_a_loaded_machine(args, started):
    """Once the input is checked: a machine loaded by other work at `started` stops the
    benchmark (experiments.bench.sanity.BenchmarkInsane) unless --allow-loaded."""
    from experiments.bench import sanity
    if not args.allow_loaded:
        sanity.check({}, load_start=started["load"][0], cores=os.cpu_count())


def parse_periods(text, names):
    """'local=4,postlocal=4' -> {"local": 4, "postlocal": 4}: the averaging period of
    single contenders, where they must differ from --period (one job runs them all).
    ValueError naming the option on bad input."""
    periods = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in names or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--periods takes NAME=H pairs with NAME one of "
                             f"{', '.join(names)} and H >= 1, got {item!r}")
        periods[name] = int(value)
    return periods


def check_delay_max(value):
    """The largest d --delay auto may choose (DaSGD's delay_bounds high end)."""
    if value < 1:
        raise ValueError(f"--delay-max must be >= 1, got {value}")
    return value
