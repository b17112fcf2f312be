"""The arithmetic of the per-node-link benchmark (launch.bench_nodes), on fabricated
measurements: the ratio intervals, the step summary of periodic strategies, the alpha-beta
model on synthetic numbers it must recover, the rows, the sanity checks and the files.
No processes are started: the 4-node run end to end is in tests/test_multinode.py."""
import json
import time

import pytest

from experiments.bench import node_model, nodes_report, sanity
from experiments.bench.contenders import window_median
from experiments.bench.intervals import (fastest_other, median_interval, per_round_ratios,
                                         ratio_interval)
from experiments.bench.nodes_markdown import to_markdown

A, BETA = 0.004, 12.5e6  # synthetic intercept (s) and bandwidth (bytes/s)
SIZES = (65536, 262144, 1048576, 4194304)
MODEL_BYTES = 1_096_168


def test_median_interval_is_a_seeded_bootstrap_around_the_median():
    values = [1.02, 0.98, 1.05, 1.01, 0.99, 1.04, 1.00, 1.03]
    got = median_interval(values)
    assert got["median"] == pytest.approx(1.015) and got["rounds"] == 8
    assert min(values) <= got["lo"] <= got["median"] <= got["hi"] <= max(values)
    assert median_interval(values) == got  # fixed seed: same data, same interval
    assert median_interval([1.5]) == {"median": 1.5, "lo": None, "hi": None, "rounds": 1}
    with pytest.raises(ValueError):
        median_interval([])


def test_ratios_are_paired_by_round():
    none = [0.10, 0.20, 0.10]  # the load doubled in round 2: the pair cancels it
    sync = [0.15, 0.30, 0.15]
    assert per_round_ratios(sync, none) == pytest.approx([1.5, 1.5, 1.5])
    got = ratio_interval(sync, none)
    assert (got["median"], got["lo"], got["hi"]) == pytest.approx((1.5, 1.5, 1.5))
    rounds = {"dasgd": [1, 5, 3], "sync": [2, 4, 9], "ddp": [3, 3, 3]}
    assert fastest_other(rounds, "dasgd", ["sync", "ddp", "dasgd"]) == [2, 3, 3]


def test_periodic_strategies_pay_their_averaging_step():
    # local H = 4: three compute steps and one blocking average, twice
    times = [0.01, 0.01, 0.01, 0.13] * 2
    assert window_median(times, 4) == pytest.approx(0.04)
    assert window_median(times, 1) == pytest.approx(0.01)  # what a plain median reports


def synthetic_points(p, variant):
    return [(p, n, node_model.allreduce_s({"workers": 2, "intercept_s": A,
                                           "beta_bytes_per_s": BETA}, p, n, variant))
            for n in SIZES + (MODEL_BYTES,)]


@pytest.mark.parametrize("variant", ["per_hop", "per_call"])
def test_the_two_node_calibration_recovers_the_model_and_predicts_larger_counts(variant):
    cal = node_model.calibrate_allreduce(synthetic_points(2, variant))
    assert cal["intercept_s"] == pytest.approx(A, rel=1e-6)
    assert cal["beta_bytes_per_s"] == pytest.approx(BETA, rel=1e-6)
    for p in (4, 8, 16):
        for _, n, t in synthetic_points(p, variant):
            assert node_model.allreduce_s(cal, p, n, variant) == pytest.approx(t, rel=1e-6)
    # per hop: 2(p-1) hops of a/2; per call: a once
    assert node_model.allreduce_s(cal, 16, 0, "per_hop") == pytest.approx(15 * A)
    assert node_model.allreduce_s(cal, 16, 0, "per_call") == pytest.approx(A)
    with pytest.raises(ValueError):
        node_model.calibrate_allreduce([(2, 1000, 0.1), (4, 2000, 0.2)])  # two counts


def test_per_piece_reads_each_hop_off_the_two_node_allreduce_of_the_same_piece():
    cal = node_model.calibrate_allreduce(synthetic_points(2, "per_hop"))
    # on data the per-hop line fits exactly, the two readings agree at every count
    for p in (4, 8, 16):
        assert node_model.allreduce_s(cal, p, MODEL_BYTES, "per_piece") == \
            pytest.approx(node_model.allreduce_s(cal, p, MODEL_BYTES, "per_hop"), rel=1e-6)
    # a 2-node bandwidth that is better for small pieces carries over to larger rings:
    # 16 nodes move pieces of n/16, i.e. hops of a 2-node allreduce of n/8 bytes
    bumpy = dict(cal, points=[(65536, 0.004), (262144, 0.010), (1048576, 0.100),
                              (4194304, 0.400)])
    assert node_model.allreduce_s(bumpy, 16, 1048576, "per_piece") == \
        pytest.approx(15 * (0.004 + (131072 - 65536) / (262144 - 65536) * 0.006))


def test_step_model_link_bound_and_compute_bound():
    cal = {"workers": 2, "intercept_s": A, "beta_bytes_per_s": BETA}
    t2 = node_model.allreduce_s(cal, 2, MODEL_BYTES)
    # link-bound dasgd at 2 nodes (10 ms compute, ~92 ms average): the link paces it
    steps = node_model.calibrate_steps(cal, MODEL_BYTES, {"none": 0.01, "sync": 0.01 + t2,
                                                          "dasgd": t2 + 0.002}, 1)
    assert steps["dasgd_eps_s"] == pytest.approx(0.002) and steps["dasgd_delta_s"] == 0
    at16 = node_model.predict_steps(cal, steps, MODEL_BYTES, 16)
    t16 = node_model.allreduce_s(cal, 16, MODEL_BYTES)
    assert at16["dasgd_s"] == pytest.approx(t16 + 0.002)
    assert at16["sync_s"] == pytest.approx(0.01 + t16)
    # compute-bound (1 s compute): dasgd stays at compute + its own overhead
    steps = node_model.calibrate_steps(cal, MODEL_BYTES, {"none": 1.0, "sync": 1.05,
                                                          "dasgd": 1.01}, 1)
    assert steps["dasgd_delta_s"] == pytest.approx(0.01)
    assert node_model.predict_steps(cal, steps, MODEL_BYTES, 4)["dasgd_s"] == \
        pytest.approx(1.01)


def test_fit_to_all_counts_recovers_call_constant_latency_and_bandwidth():
    t0, alpha = 0.002, 0.0005
    points = [(p, n, t0 + 2 * (p - 1) * alpha + 2 * (p - 1) / p * n / BETA)
              for p in (2, 4, 8, 16) for n in SIZES]
    fit = node_model.fit_all(points)
    assert (fit["t0_s"], fit["alpha_s"]) == pytest.approx((t0, alpha), rel=1e-6)
    assert fit["beta_bytes_per_s"] == pytest.approx(BETA, rel=1e-6)
    assert fit["max_abs_error"] < 1e-9 and len(fit["points"]) == len(points)


def fabricated_result(p, compute=0.01, rounds=4, dasgd_factor=1.05):
    """A job's result as experiments.bench.comm writes it, from the synthetic model."""
    cal = {"workers": 2, "intercept_s": A, "beta_bytes_per_s": BETA}
    t = node_model.allreduce_s(cal, p, MODEL_BYTES)
    step = {"none": compute, "sync": compute + t, "local": compute + t / 4,
            "dasgd": max(compute * dasgd_factor, t), "ddp": compute + 1.1 * t,
            "postlocal": compute + 1.1 * t / 4}
    wobble = [1.0, 1.01, 0.99, 1.0][:rounds]  # median exactly 1
    return {"round_step_s": {k: [v * w for w in wobble] for k, v in step.items()},
            "step_s": step, "hosts": [f"node{i + 1}" for i in range(p)],
            "dasgd_delay": 3, "periods": {"local": 4, "dasgd": 1, "postlocal": 4},
            "cpu_s_per_step": {k: {"compute": 0.001, "comm": 0.002} for k in step},
            "model_bytes": MODEL_BYTES,
            "allreduce_sizes": [{"workers": p, "bytes": n, "seconds": s}
                                for _, n, s in synthetic_points(p, "per_hop")]}


def fabricated_report(counts=(2, 4, 8)):
    rows = [nodes_report.measured_row(p, fabricated_result(p), cores=2) for p in counts]
    model = nodes_report.model_checks(rows, MODEL_BYTES, period=1)
    for row in rows:
        row["targets"] = nodes_report.targets(row)
    return {"command": "python -m launch.bench_nodes --json x.json", "rate": "100mbit",
            "nodes_max": max(counts), "cores": 2, "model_name": "resnet20",
            "model_bytes": MODEL_BYTES, "batch_per_rank": 32, "compute": "device:10",
            "contenders": list(nodes_report.CONTENDERS),
            "periods": {"local": 4, "dasgd": 1, "postlocal": 4}, "delay": "auto",
            "delay_max": 32, "rounds": 4, "block_steps": 8, "cycle_time_ms": 5,
            "rows": rows, "model": model,
            "provenance": {"commit": "abc", "dirty": False, "load_start": [0.1, 0.1, 0.1],
                           "wall_s": 60, "loaded": False}}


def test_rows_hold_ratios_with_intervals_targets_and_model_errors():
    report = fabricated_report()
    row8 = report["rows"][2]
    assert row8["workers"] == 8 and row8["none_s"] == pytest.approx(0.01, rel=0.02)
    for name in ("sync", "local", "dasgd", "ddp", "postlocal"):
        r = row8[f"{name}_over_none"]
        assert r["lo"] <= r["median"] <= r["hi"] and r["rounds"] == 4
    assert row8["host_cpu_busy"] == pytest.approx(8 * 0.003 / (2 * 0.01))
    # synthetic data from the model itself: the 2-node calibration predicts it exactly
    for row in report["rows"]:
        assert row["model_error_allreduce"] == pytest.approx(0, abs=1e-6)
        assert row["model_error_sync"] == pytest.approx(0, abs=1e-6)
        assert row["model_error_dasgd"] == pytest.approx(0, abs=1e-6)
    assert report["model"]["within_target"]["per_hop"] is True
    # a link too slow for one average per step: dasgd cannot be within 1.10 of none
    assert row8["targets"]["dasgd_within_1.10_of_none"] is False
    assert row8["targets"]["sync_pays_1.5"] is True
    assert report["rows"][0]["targets"]["sync_pays_1.5"] is None  # only from 8 nodes on


def test_sanity_checks_trip_on_fabricated_node_results():
    good = fabricated_result(4, rounds=4)
    nodes_report.check_sane(good, cores=2, load_start=0.5)
    faster = fabricated_result(4)
    faster["round_step_s"]["local"] = [v * 0.7 for v in faster["round_step_s"]["none"]]
    with pytest.raises(sanity.BenchmarkInsane, match="local steps faster than `none`"):
        nodes_report.check_sane(faster)
    hidden = fabricated_result(4)
    rs = hidden["round_step_s"] = {"none": [0.1] * 4, "sync": [0.15] * 4}
    # dasgd as fast as none within the noise, but its median below none's: hidden > 1
    rs["dasgd"] = [0.1 * f for f in (0.96, 1.02, 0.97, 1.0)]
    with pytest.raises(sanity.BenchmarkInsane, match="hidden fraction"):
        nodes_report.check_sane(hidden)
    with pytest.raises(sanity.BenchmarkInsane, match="loaded by other work"):
        nodes_report.check_sane(good, cores=2, load_start=7.5)


def test_markdown_starts_with_the_command_and_the_plot_is_written(tmp_path):
    report = fabricated_report()
    assert nodes_report.plot(report, str(tmp_path / "n.png"))
    assert (tmp_path / "n.png").stat().st_size > 1000
    report["plot"] = "n.png"
    text = to_markdown(report)
    assert text.splitlines()[2] == "Reproduce: `python -m launch.bench_nodes --json x.json`"
    assert "| 8 | 0.01" in text and "per hop: met" in text and "![ratios and model](n.png)" \
        in text


def test_bench_nodes_refuses_a_loaded_machine_and_bad_input_in_one_line(tmp_path, monkeypatch,
                                                                        capsys):
    from launch import bench_nodes
    monkeypatch.setattr(bench_nodes, "start", lambda: {"time": time.time(), "load": [9.0] * 3})
    with pytest.raises(sanity.BenchmarkInsane, match="loaded by other work"):
        bench_nodes.main(["--json", str(tmp_path / "n.json")])
    for argv, message in ((["--workers", "4,8"], "--workers must start at 2"),
                          (["--contenders", "none,ddp"], "--contenders must hold none"),
                          (["--rounds", "1"], "--rounds >= 2"),
                          (["--json", str(tmp_path / "no" / "n.json")], "not writable")):
        with pytest.raises(SystemExit) as info:
            bench_nodes.main(["--json", str(tmp_path / "n.json"), *argv])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err
    assert not list(tmp_path.iterdir())
    json.dumps(fabricated_report())  # the report is plain JSON
