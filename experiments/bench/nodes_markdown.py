"""The per-node-link benchmark's table (docs/results/nodes_device.md): the reproducing
command first, then the set-up, the ratios with their intervals, the targets, the model."""


def _ci(r, digits=3):
    if r is None:
        return "—"
    if r["lo"] is None:
        return f"{r['median']:.{digits}f}"
    return f"{r['median']:.{digits}f} [{r['lo']:.{digits}f}, {r['hi']:.{digits}f}]"


def _pct(x):
    return "—" if x is None else f"{100 * x:+.1f} %"


def _yes(flag):
    return "—" if flag is None else ("yes" if flag else "**no**")


def setup_lines(report):
    prov = report["provenance"]
    periods = ", ".join(f"{k} H = {v}" for k, v in sorted(report["periods"].items())
                        if k in ("local", "dasgd", "postlocal"))
    loaded = " **Loaded machine** (load at start above the cores): the times are inflated." \
        if prov.get("loaded") else ""
    return [
        f"{report['nodes_max']} emulated nodes on one machine ({report['cores']} cores), one "
        f"rank per node, each node's link limited to {report['rate']} (tc tbf on both ends of "
        f"its veth), Horovod over Open MPI (TCP, ring allreduce forced), cycle time "
        f"{report['cycle_time_ms']:g} ms; PyTorch's DDP and PostLocalSGD over gloo across the "
        f"same links. Model {report['model_name']} ({report['model_bytes'] / 1e6:.3g} MB "
        f"averaged), batch {report['batch_per_rank']} per rank, compute "
        f"`{report['compute']}` (the forward/backward sleeps on an emulated GPU, "
        f"[docs/multinode.md](../multinode.md)). Contenders: "
        f"{', '.join(report['contenders'])}; {periods}; dasgd `--delay {report['delay']}` "
        f"(at most {report['delay_max']}). {report['rounds']} interleaved rounds of turns of "
        f"{report['block_steps']} steps (the first, and dasgd's steps before its first merge, "
        f"untimed), one job per node count.{loaded}", "",
        "Ratios: median of the per-round ratios to `none` (turns of one round ran back to "
        "back), in brackets the 95 % percentile-bootstrap interval of that median "
        "(experiments/bench/intervals.py). `hidden` = (sync − dasgd) / (sync − none) from "
        "the medians; `d` = the delay dasgd chose; `host CPU` = the largest share of the "
        "machine's cores the ranks' own threads used during any contender's steps (near 1 "
        "the nodes compete for the host's cores and the steps measure that, not a cluster).",
        "", f"Provenance: commit `{prov.get('commit')}`"
        f"{' (uncommitted changes)' if prov.get('dirty') else ''}, {prov.get('cpu_model')}, "
        f"load {prov.get('load_start')} at start, {prov.get('date_start')}, "
        f"{prov.get('wall_s', 0) / 60:.0f} min."]


def ratio_table(rows, contenders):
    names = [n for n in contenders if n != "none"]
    lines = ["| nodes | none step s | " + " | ".join(f"{n}/none" for n in names) +
             " | dasgd/fastest peer | hidden | d | host CPU |",
             "|---|---|" + "---|" * len(names) + "---|---|---|---|"]
    for r in rows:
        hidden = r["hidden_fraction"]
        lines.append(f"| {r['workers']} | {r['none_s']:.4g} | " +
                     " | ".join(_ci(r.get(f"{n}_over_none")) for n in names) +
                     f" | {_ci(r.get('dasgd_over_fastest_peer'))} | "
                     f"{'—' if hidden is None else f'{hidden:.2f}'} | {r['dasgd_delay']} | "
                     f"{r['host_cpu_busy']:.2f} |")
    return lines


def target_table(rows):
    lines = ["| nodes | dasgd ≤ 1.10 × none | sync ≥ 1.5 × none (8, 16 nodes) | dasgd no "
             "slower than any peer |", "|---|---|---|---|"]
    for r in rows:
        t = r["targets"]
        lines.append(f"| {r['workers']} | {_yes(t.get('dasgd_within_1.10_of_none'))} | "
                     f"{_yes(t.get('sync_pays_1.5'))} | "
                     f"{_yes(t.get('dasgd_no_slower_than_peers'))} |")
    return lines


def model_lines(model):
    cal = model["calibration"]
    lines = ["## The alpha-beta model, calibrated on 2 nodes", "",
             f"Fitted to the {len(cal.get('sizes', [])) or 'measured'} allreduce sizes at 2 "
             f"nodes: intercept a = {cal['intercept_s'] * 1e3:.3g} ms, beta = "
             f"{cal['beta_bytes_per_s'] / 1e6:.4g} MB/s. Prediction at p nodes with the "
             "2-node compute (nothing measured at p enters); error = (model − measured) / "
             "measured. `per hop` reads a as latency of the 2 hops of a 2-node ring "
             "(alpha = a/2 per hop), `per call` as a constant per allreduce; `per piece` "
             "takes each hop's cost from the 2-node allreduce whose hops move the same piece "
             "(experiments/bench/node_model.py).", "",
             "| nodes | model | allreduce: measured s, error | sync: measured s, error | "
             "dasgd: measured s, error | sync, dasgd error with measured `none` |",
             "|---|---|---|---|---|---|"]
    for variant, data in model["variants"].items():
        for p, at in sorted(data["at"].items()):
            m, e, ec = at["measured"], at["error"], at["error_measured_compute"]
            ar = "—" if m["allreduce_s"] is None else f"{m['allreduce_s']:.4g}"
            lines.append(f"| {p} | {variant.replace('_', ' ')} | {ar}, "
                         f"{_pct(e['allreduce_s'])} | {m['sync_s']:.4g}, {_pct(e['sync_s'])} | "
                         f"{m['dasgd_s']:.4g}, {_pct(e['dasgd_s'])} | {_pct(ec['sync_s'])}, "
                         f"{_pct(ec['dasgd_s'])} |")
    verdict = ", ".join(f"{v.replace('_', ' ')}: {'met' if ok else 'NOT met'}"
                        for v, ok in model["within_target"].items())
    fit = model["fit_all"]
    beta = fit["beta_bytes_per_s"]
    lines += ["", f"Target (every error within {100 * model['target']:.0f} % beyond 2 nodes): "
              f"{verdict}.", "",
              f"The fit to every allreduce point of every node count (t = t0 + 2(p−1) alpha "
              f"+ 2(p−1)/p n / beta): t0 = {fit['t0_s'] * 1e3:.3g} ms, alpha = "
              f"{fit['alpha_s'] * 1e6:.3g} us, beta = "
              f"{'unbounded' if beta is None else f'{beta / 1e6:.4g} MB/s'}, largest error "
              f"{100 * fit['max_abs_error']:.1f} %:", "",
              "| nodes | bytes | measured s | fit s | error |", "|---|---|---|---|---|"]
    lines += [f"| {pt['workers']} | {pt['bytes']} | {pt['measured_s']:.4g} | "
              f"{pt['model_s']:.4g} | {_pct(pt['error'])} |" for pt in fit["points"]]
    return lines


def to_markdown(report):
    lines = ["# DaSGD across nodes: device-time compute on emulated nodes", "",
             f"Reproduce: `{report['command']}`", ""]
    lines += setup_lines(report)
    lines += ["", "## Steps", ""] + ratio_table(report["rows"], report["contenders"])
    lines += ["", "## Targets (medians)", ""] + target_table(report["rows"])
    if report.get("model"):
        lines += [""] + model_lines(report["model"])
    lines += ["", "![ratios and model](" + report["plot"] + ")" if report.get("plot") else "",
              ""]
    return "\n".join(lines)
