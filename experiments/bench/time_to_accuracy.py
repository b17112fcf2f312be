"""Time to a test accuracy: the steps the claims study's D1 runs needed to reach it
(measured: Fashion-MNIST, small_cnn, batch 32 per rank, at 2 to 16 ranks) times the step
time of the same strategy at the same node count from the per-node-link benchmark
(measured: launch.bench_nodes, device-time compute, ResNet-20-sized averages on emulated
links). The product is combined, not measured: no run trained to the target on those links.
It reads as "how long the study's number of steps would take at the benchmark's step cost".

Matching: a D1 run's strategy and rank count pick the benchmark row (workers = ranks) and
contender (sync, local, dasgd). DaSGD's step there is at the delay `--delay auto` chose;
for a D1 run with a smaller d the benchmark's step is a lower bound (it waited less than a
run with that d would), and the result says so.
"""
import json
import math

from experiments.studies.verdicts import interval, steps_to

CONTENDER = {"sync": "sync", "local": "local", "dasgd": "dasgd"}


class MissingData(ValueError):
    """An input lacks what the combination needs (one line naming it)."""


def read_runs(path):
    """The D1 runs (claims_D1.jsonl: one JSON object per line) with more than one rank."""
    try:
        with open(path) as f:
            lines = [line for line in f if line.strip()]
    except OSError as exc:
        raise MissingData(f"cannot read the claims study's runs {path}: {exc.strerror}") \
            from None
    try:
        runs = [json.loads(line) for line in lines]
    except ValueError:
        raise MissingData(f"{path} is not JSON lines (one run per line)") from None
    runs = [r for r in runs if isinstance(r, dict) and r.get("ranks", 1) > 1]
    if not runs:
        raise MissingData(f"no finished multi-rank (D1) run in {path}: the claims study has "
                          "not published any yet, so there are no steps to combine")
    return runs


def read_step_times(path):
    """{workers: row} of launch.bench_nodes' JSON."""
    try:
        with open(path) as f:
            report = json.load(f)
        rows = {int(r["workers"]): r for r in report["rows"]}
    except OSError as exc:
        raise MissingData(f"cannot read the step times {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise MissingData(f"{path} is not launch.bench_nodes' JSON (rows by workers)") \
            from None
    return report, rows


def label(run):
    s = run["strategy"]
    if s == "dasgd":
        return f"dasgd d={run['delay']}" + (f" H={run['period']}" if run["period"] != 1 else "")
    return f"local H={run['period']}" if s == "local" else s


def steps_to_target(runs, target):
    """{(label, ranks): {"steps": [steps of the runs that reached it], "runs": n, "run":
    one run (its settings)}}; target in accuracy points. A diverged run never reaches it."""
    out = {}
    for r in runs:
        key = (label(r), int(r["ranks"]))
        entry = out.setdefault(key, {"steps": [], "runs": 0, "run": r})
        entry["runs"] += 1
        hit = None if r.get("diverged") else steps_to(r.get("curve") or [], target / 100,
                                                      "test_acc")
        if hit is not None:
            entry["steps"].append(hit)
    return out


def step_time(row, run):
    """(seconds, lo, hi, note) of the benchmark's step matching `run`, or None."""
    name = CONTENDER.get(run["strategy"])
    if name is None or name not in row.get("step_s", {}):
        return None
    ratio = row.get(f"{name}_over_none")
    seconds = row["step_s"][name]
    lo = hi = seconds
    if ratio and ratio.get("lo") is not None:
        lo, hi = row["none_s"] * ratio["lo"], row["none_s"] * ratio["hi"]
    notes = []
    period = (row.get("periods") or {}).get(name)
    if name in ("local", "dasgd") and period is not None and period != run["period"]:
        notes.append(f"benchmark {name} H={period}, run H={run['period']}")
    if name == "dasgd" and row.get("dasgd_delay") and run["delay"] < row["dasgd_delay"]:
        notes.append(f"lower bound: benchmark d={row['dasgd_delay']} > run d={run['delay']}")
    return seconds, lo, hi, "; ".join(notes)


def combine(runs, step_rows, target):
    """One entry per (strategy, ranks) of the runs: steps to the target (measured), the
    step time (measured), their product (combined) with a conservative interval (the
    steps' 95 % t-interval ends times the step's interval ends)."""
    table = []
    for (name, ranks), got in sorted(steps_to_target(runs, target).items(),
                                     key=lambda kv: (kv[0][1], kv[0][0])):
        steps = interval(got["steps"])
        entry = {"strategy": name, "ranks": ranks, "runs": got["runs"],
                 "reached": len(got["steps"]), "steps": steps, "step_s": None,
                 "time_s": None, "note": ""}
        row = step_rows.get(ranks)
        timing = step_time(row, got["run"]) if row else None
        if row is None:
            entry["note"] = f"no step time at {ranks} nodes"
        elif timing is None:
            entry["note"] = f"no {got['run']['strategy']} step in the benchmark"
        else:
            seconds, lo, hi, entry["note"] = timing
            entry["step_s"] = {"median": seconds, "lo": lo, "hi": hi}
            if steps["mean"] is not None:
                s_lo = steps["lo"] if steps["lo"] is not None else steps["mean"]
                s_hi = steps["hi"] if steps["hi"] is not None else steps["mean"]
                entry["time_s"] = {"value": steps["mean"] * seconds,
                                   "lo": max(0.0, s_lo) * lo, "hi": s_hi * hi}
        table.append(entry)
    if all(e["time_s"] is None for e in table):
        raise MissingData(f"nothing to combine: no D1 rank count that reached {target:g} % "
                          f"has a step time (benchmark node counts {sorted(step_rows)})")
    return table


def _fmt(x, digits=3):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def to_markdown(table, target, command, sources):
    lines = [f"# Time to {target:g} % test accuracy, per strategy and node count", "",
             f"Reproduce: `{command}`", "",
             f"**Measured**: the steps to {target:g} % test accuracy, from the claims study's "
             f"D1 runs ({sources['runs']}: Fashion-MNIST, small_cnn, batch 32 per rank); the "
             f"step time of each strategy at each node count, from {sources['steps']} "
             "(device-time compute, emulated nodes). **Combined**: time = mean steps of the "
             "runs that reached the target × the median step; its interval multiplies the "
             "ends of the steps' 95 % t-interval (across seeds) and of the step's 95 % "
             "interval, so it is wide, not a confidence interval of the product. No run "
             "trained on these links: the two measurements are of different models.", "",
             "| nodes | strategy | reached | steps (95 % interval) | step s (95 % interval) | "
             "time s (interval) | note |", "|---|---|---|---|---|---|---|"]
    for e in table:
        st, sp, tm = e["steps"], e["step_s"], e["time_s"]
        steps = "never" if st["mean"] is None else (
            f"{st['mean']:.0f}" + ("" if st["lo"] is None else
                                   f" [{st['lo']:.0f}, {st['hi']:.0f}]"))
        step = "—" if sp is None else f"{_fmt(sp['median'])} [{_fmt(sp['lo'])}, {_fmt(sp['hi'])}]"
        bound = "≥ " if "lower bound" in e["note"] else ""
        time = "—" if tm is None else \
            f"{bound}{_fmt(tm['value'])} [{_fmt(tm['lo'])}, {_fmt(tm['hi'])}]"
        lines.append(f"| {e['ranks']} | {e['strategy']} | {e['reached']}/{e['runs']} | {steps} "
                     f"| {step} | {time} | {e['note']} |")
    return "\n".join(lines) + "\n"


def plot(table, target, path):
    """Time to the target against nodes, one line per strategy; the path, or None without
    matplotlib."""
    from toolkit.scaling.report import pyplot
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in sorted({e["strategy"] for e in table}):
        pts = [(e["ranks"], e["time_s"]) for e in table
               if e["strategy"] == name and e["time_s"] is not None]
        if not pts:
            continue
        ps = [p for p, _ in pts]
        values = [t["value"] for _, t in pts]
        ax.errorbar(ps, values, yerr=[[v - t["lo"] for v, (_, t) in zip(values, pts)],
                                      [t["hi"] - v for v, (_, t) in zip(values, pts)]],
                    marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("nodes (one rank each)")
    ax.set_ylabel(f"seconds to {target:g} % test accuracy (combined)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
