"""The claims study: verdicts of the claims of plan.py from the finished runs, and its files.

Per family F (L1, L2, L3, D1, S) in the output directory: claims_F.md (tables),
claims_F.png (accuracy against steps, mean and 95 % band across seeds), claims_F.jsonl (one
row per run), claims_F.json (comparisons, verdicts, intervals, provenance); claims.md and
claims.json summarise every claim. publish() copies these small files elsewhere.
"""
import glob
import json
import math
import os
import shutil

from experiments.studies import plan as plan_mod
from experiments.studies import verdicts as v
from experiments.studies.results import row as run_row


def collect(runner, fams, seeds):
    """{(config name, seed): row} of every finished run the families need."""
    rows = {}
    for config, seed in plan_mod.runs_of(fams, seeds):
        r = run_row(runner.directory(config, seed), config, seed, runner.scale)
        if r is not None:
            rows[config.name(), seed] = r
    return rows


def _seeds_with(rows, configs):
    return sorted(set.intersection(*({s for (n, s) in rows if n == c.name()}
                                     for c in configs)))


def evaluate(comparison, rows, classes=plan_mod.CLASSES):
    """The comparison's per-seed values, interval and verdict."""
    configs = [c for _, c in comparison.terms]
    seeds = _seeds_with(rows, configs)
    out = {"id": comparison.id, "claim": comparison.text, "kind": comparison.kind,
           "metric": comparison.metric, "side": comparison.side,
           "terms": [[k, c.name()] for k, c in comparison.terms], "seeds": seeds,
           "diverged_runs": sum(rows[c.name(), s]["diverged"] for c in configs
                                for s in seeds)}
    if comparison.metric == "steps_ratio":
        return _steps_ratio(out, comparison, rows, seeds)
    values = [sum(k * v.final_accuracy(rows[c.name(), s], classes)
                  for k, c in comparison.terms) for s in seeds]
    ci = v.interval(values)
    verdict = {"equivalence": v.equivalence, "noninferiority": v.noninferiority}.get(
        comparison.kind, lambda ci: v.superiority(ci, comparison.side))(ci)
    return {**out, "unit": "accuracy points", "values": values, "ci": ci,
            "margin": None if comparison.kind == "superiority" else v.MARGIN_POINTS,
            "verdict": verdict}


def _steps_ratio(out, comparison, rows, seeds):
    (_, a), (_, b) = comparison.terms
    values, censored, excluded = [], 0, []
    for s in seeds:
        ra, rb = rows[a.name(), s], rows[b.name(), s]
        if rb["diverged"] or not rb["val_acc"]:
            excluded.append(s)  # no reference accuracy to reach
            continue
        reached = None if ra["diverged"] else v.steps_to(ra["curve"], rb["val_acc"], "val_acc")
        value, cens = v.log_ratio(reached, rb["steps"],
                                  ra["total_steps"] if ra["diverged"] else ra["steps"])
        values.append(value)
        censored += cens
    ci = v.interval(values)
    ratio = {k: (math.exp(ci[k]) if ci[k] is not None else None) for k in ("mean", "lo", "hi")}
    return {**out, "unit": "ln(steps ratio)", "values": values, "ci": ci, "ratio": ratio,
            "censored": censored, "excluded_seeds": excluded,
            "verdict": v.ratio_verdict(ci, censored, comparison.side)}


def config_summary(config, rows, scale, classes=plan_mod.CLASSES):
    runs = [r for (n, _), r in rows.items() if n == config.name()]
    acc = v.interval([v.final_accuracy(r, classes) for r in runs])
    val = v.interval([100 * r["val_acc"] for r in runs if not r["diverged"] and r["val_acc"]])
    def mean(key):
        values = [r[key] for r in runs if r.get(key)]
        return sum(values) / len(values) if values else None
    return {"config": config.name(), "model": config.model, "label": config.label(),
            "runs": len(runs), "diverged": sum(r["diverged"] for r in runs), "test": acc,
            "val": val, "steps": plan_mod.size_of(config, scale)[2],
            "run_s_mean": mean("run_s"), "cpu_s_mean": mean("cpu_s")}


def steps_to_target(family, rows):
    """D1: per configuration, steps to the final validation accuracy of sync (same ranks and
    seed) minus 1 point; [(label, mean steps or None, reached, runs)]."""
    out = []
    for _, configs in family.panels:
        sync = configs[0]
        for c in configs:
            steps, n = [], 0
            for (name, s), r in rows.items():
                ref = rows.get((sync.name(), s))
                if name != c.name() or ref is None or ref["diverged"]:
                    continue
                n += 1
                hit = None if r["diverged"] else v.steps_to(r["curve"], ref["val_acc"] - 0.01,
                                                             "val_acc")
                if hit is not None:
                    steps.append(hit)
            out.append((c.label(), sum(steps) / len(steps) if steps else None, len(steps), n))
    return out


def _pm(ci, digits=2):
    if ci["mean"] is None:
        return "—"
    if ci["lo"] is None:
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} ± {ci['hi'] - ci['mean']:.{digits}f}"


def _interval_text(c):
    ci = c["ci"]
    if c["metric"] == "steps_ratio":
        r = c["ratio"]
        if r["mean"] is None:
            return "—", "—"
        return f"{r['mean']:.2f}", ("—" if r["lo"] is None else f"[{r['lo']:.2f}, {r['hi']:.2f}]")
    if ci["mean"] is None:
        return "—", "—"
    return f"{ci['mean']:+.2f}", ("—" if ci["lo"] is None else f"[{ci['lo']:+.2f}, {ci['hi']:+.2f}]")


def comparison_table(comparisons, link=None):
    lines = ["| claim | kind | pairs | mean | 95 % interval | verdict |" if not link else
             "| claim | family | kind | pairs | mean | 95 % interval | verdict |",
             "|---|---|---|---|---|---|" + ("---|" if link else "")]
    for c in comparisons:
        mean, ci = _interval_text(c)
        kind = {"equivalence": f"equivalence (±{v.MARGIN_POINTS:g} points)",
                "noninferiority": f"non-inferiority (> −{v.MARGIN_POINTS:g} points)",
                "superiority": "superiority"}[c["kind"]]
        if c["metric"] == "steps_ratio":
            kind = "fewer steps (ratio < 1)"
        extra = []
        if c["diverged_runs"]:
            extra.append(f"{c['diverged_runs']} diverged run(s)")
        if c.get("censored"):
            extra.append(f"{c['censored']} never reached it")
        if not c["values"]:
            extra.append("no runs yet")
        note = f" ({'; '.join(extra)})" if extra else ""
        fam = f" [{link(c)}]({link(c)}.md) |" if link else ""
        lines.append(f"| **{c['id']}**: {c['claim']} |{fam} {kind} | {len(c['values'])} | "
                     f"{mean} | {ci} | **{c['verdict']}**{note} |")
    return "\n".join(lines)


def family_markdown(family, summaries, comparisons, seeds, scale, d1_steps=None):
    lines = [f"# {family.id}: {family.title}", "",
             f"Fashion-MNIST; seeds {', '.join(map(str, seeds))}; accuracies in %, mean ± "
             "half-width of the 95 % t-interval across seeds. A diverged run counts as "
             f"chance ({100 / plan_mod.CLASSES:g} %). {family.notes}", "",
             "| model | configuration | runs | diverged | final test acc | final val acc | "
             "steps | s per run (CPU s) |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        wall = "—" if s["run_s_mean"] is None else f"{s['run_s_mean']:.0f}"
        if s["cpu_s_mean"] is not None:
            wall += f" ({s['cpu_s_mean']:.0f})"
        lines.append(f"| {s['model']} | {s['label']} (`{s['config']}`) | {s['runs']} | "
                     f"{s['diverged']} | {_pm(s['test'])} | {_pm(s['val'])} | {s['steps']} | "
                     f"{wall} |")
    lines += ["", "Claims (paired by seed; differences in accuracy points):", "",
              comparison_table(comparisons)]
    if d1_steps:
        lines += ["", "Steps to sync's final validation accuracy − 1 point (same seed):", "",
                  "| configuration | mean steps (runs that reached it) | reached |",
                  "|---|---|---|"]
        lines += [f"| {label} | {'never' if m is None else f'{m:.0f}'} | {k}/{n} |"
                  for label, m, k, n in d1_steps]
    lines += ["", f"![test accuracy against steps](claims_{family.id}.png)", ""]
    return "\n".join(lines)


def write_family(out, family, rows, seeds, scale, provenance):
    from experiments.bands import plot_bands
    summaries = [config_summary(c, rows, scale) for c in family.configs]
    comparisons = [evaluate(c, rows) for c in family.comparisons]
    d1_steps = steps_to_target(family, rows) if family.id == "D1" else None
    base = os.path.join(out, f"claims_{family.id}")
    names = {c.name() for c in family.configs}
    with open(base + ".jsonl", "w") as f:
        for key in sorted(k for k in rows if k[0] in names):
            f.write(json.dumps(rows[key]) + "\n")
    with open(base + ".md", "w") as f:
        f.write(family_markdown(family, summaries, comparisons, seeds, scale, d1_steps))
    with open(base + ".json", "w") as f:
        json.dump({"family": family.id, "title": family.title, "notes": family.notes,
                   "dataset": plan_mod.DATASET, "scale": scale, "seeds": seeds,
                   "configs": summaries, "comparisons": comparisons,
                   "steps_to_target": d1_steps, "provenance": provenance}, f, indent=1)
    panels = [(title, [(c.label().replace(f", {c.ranks} ranks", ""),
                        [r["curve"] for (n, _), r in sorted(rows.items()) if n == c.name()])
                       for c in configs]) for title, configs in family.panels]
    try:
        plot_bands(panels, base + ".png", "test_acc", f"{family.id}: {family.title}")
    except RuntimeError as exc:  # PlotUnavailable: matplotlib missing
        print(f"note: {exc}")
    return comparisons


def write_all(out, fams, rows, seeds, scale, provenance, failed=()):
    every = []
    for family in fams:
        every += write_family(out, family, rows, seeds, scale, provenance)
    counts = {k: sum(c["verdict"] == k for c in every)
              for k in (v.SUPPORTED, v.CONTRADICTED, v.INCONCLUSIVE)}
    runs_wall = sum(r["run_s"] or r["wall_s"] or 0 for r in rows.values())
    empty = sum(not c["values"] for c in every)
    p = provenance
    lines = ["# Claims study", "",
             f"`{p['command']}`, commit {(p['commit'] or '?')[:12]}"
             f"{' (uncommitted changes)' if p['dirty'] else ''}; {p['cpu_model']}, "
             f"{p['cores']} cores, {p['threads']} thread per process; load average "
             f"{p['load_start'][0]:.1f} when this report was written"
             f"{' (loaded machine)' if p['loaded'] else ''}; the runs ran one thread each, "
             f"so the load slows them but does not change their accuracies; "
             f"{len(rows)} runs, {runs_wall / 3600:.1f} h of run time. torch {p['torch']}, "
             f"Horovod {p['horovod']}, Open MPI {p['openmpi']}.", "",
             f"Verdicts: {counts[v.SUPPORTED]} supported, {counts[v.CONTRADICTED]} "
             f"contradicted, {counts[v.INCONCLUSIVE]} inconclusive"
             f"{f' ({empty} of them with no runs yet)' if empty else ''}. Superiority: supported "
             "when the 95 % interval of the paired difference lies on the claimed side of 0, "
             "contradicted when on the other side. Equivalence: supported when it lies "
             f"within ±{v.MARGIN_POINTS:g} points, contradicted when wholly outside.", "",
             comparison_table(every, link=lambda c: f"claims_{c['id'].split('.')[0]}"), ""]
    if failed:
        lines += ["Runs that failed (not in the tables):", ""] + \
            [f"- `{c.name()}` seed {s}: exit {code} ({err})" for c, s, code, err in failed] + [""]
    with open(os.path.join(out, "claims.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(out, "claims.json"), "w") as f:
        json.dump({"families": [fam.id for fam in fams], "dataset": plan_mod.DATASET,
                   "scale": scale, "seeds": seeds, "counts": counts, "runs": len(rows),
                   "runs_wall_s": runs_wall, "comparisons": every,
                   "failed": [[c.name(), s, code, err] for c, s, code, err in failed],
                   "provenance": provenance}, f, indent=1)
    return every


def publish(out, target):
    """Copies claims.md, claims.json and claims_*.{md,json,jsonl,png} to `target`."""
    os.makedirs(target, exist_ok=True)
    files = [os.path.join(out, n) for n in ("claims.md", "claims.json")]
    files += sorted(p for ext in ("md", "json", "jsonl", "png")
                    for p in glob.glob(os.path.join(out, f"claims_*.{ext}")))
    copied = [shutil.copy2(p, target) for p in files if os.path.exists(p)]
    return copied
