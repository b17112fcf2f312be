"""Time to accuracy (launch.time_to_accuracy): the claims study's steps to a target times
the per-node-link benchmark's step times, on hand-made inputs in real files."""
import json

import pytest

from experiments.bench.time_to_accuracy import (MissingData, combine, read_runs,
                                                steps_to_target)
from launch import time_to_accuracy as cli


def run(strategy, ranks, seed, reach_at, delay=1, period=1, diverged=False):
    """A D1 row: test accuracy 0.5 until step `reach_at`, 0.9 from there (None: never)."""
    curve = [{"step": s, "val_acc": 0.5, "test_acc": 0.9 if reach_at and s >= reach_at
              else 0.5} for s in (10, 20, 30, 40)]
    return {"config": f"{strategy}-{ranks}", "seed": seed, "ranks": ranks,
            "strategy": strategy, "delay": delay, "period": period, "diverged": diverged,
            "curve": curve, "steps": 40, "total_steps": 40}


RUNS = [run("sync", 2, 0, 20), run("sync", 2, 1, 30),
        run("dasgd", 2, 0, 20, delay=1), run("dasgd", 2, 1, 40, delay=1),
        run("dasgd", 2, 0, 20, delay=4), run("dasgd", 2, 1, None, delay=4),
        run("local", 2, 0, 30, period=4), run("local", 2, 1, 10, diverged=True, period=4),
        run("sync", 16, 0, 10), run("sync", 16, 1, 10)]


def bench_row(workers, none_s, step_s, delay=2):
    ratios = {f"{k}_over_none": {"median": v / none_s, "lo": 0.9 * v / none_s,
                                 "hi": 1.1 * v / none_s, "rounds": 8}
              for k, v in step_s.items() if k != "none"}
    return {"workers": workers, "none_s": none_s, "step_s": {"none": none_s, **step_s},
            "dasgd_delay": delay, "periods": {"local": 4, "dasgd": 1, "postlocal": 4},
            **ratios}


BENCH = {"rows": [bench_row(2, 0.01, {"sync": 0.1, "dasgd": 0.05, "local": 0.04}),
                  bench_row(4, 0.01, {"sync": 0.2, "dasgd": 0.06, "local": 0.05})],
         "provenance": {"commit": "abc"}}


def test_steps_to_target_per_strategy_and_ranks():
    got = steps_to_target(RUNS, 80)
    assert got["sync", 2]["steps"] == [20, 30] and got["sync", 2]["runs"] == 2
    assert got["dasgd d=4", 2]["steps"] == [20]  # the other never reached 80 %
    assert got["local H=4", 2]["steps"] == [30]  # a diverged run never reaches it
    assert steps_to_target(RUNS, 95)["sync", 2]["steps"] == []


def test_combination_multiplies_steps_by_the_matching_step_time():
    rows = {r["workers"]: r for r in BENCH["rows"]}
    table = {(e["strategy"], e["ranks"]): e for e in combine(RUNS, rows, 80)}
    sync = table["sync", 2]
    assert sync["time_s"]["value"] == pytest.approx(25 * 0.1)
    assert sync["steps"]["lo"] < 25 < sync["steps"]["hi"]
    assert sync["time_s"]["lo"] == pytest.approx(max(0, sync["steps"]["lo"]) * 0.09)
    assert sync["time_s"]["hi"] == pytest.approx(sync["steps"]["hi"] * 0.11)
    # dasgd d=1 ran with less delay than the benchmark's d=2: the time is a lower bound
    assert table["dasgd d=1", 2]["time_s"]["value"] == pytest.approx(30 * 0.05)
    assert "lower bound" in table["dasgd d=1", 2]["note"]
    assert table["dasgd d=4", 2]["note"] == ""
    assert table["local H=4", 2]["time_s"]["value"] == pytest.approx(30 * 0.04)
    assert table["sync", 16]["time_s"] is None
    assert table["sync", 16]["note"] == "no step time at 16 nodes"


def test_cli_writes_table_json_plot_and_says_what_is_measured(tmp_path, capsys):
    runs, steps = tmp_path / "claims_D1.jsonl", tmp_path / "nodes_device.json"
    runs.write_text("".join(json.dumps(r) + "\n" for r in RUNS))
    steps.write_text(json.dumps(BENCH))
    out = tmp_path / "tta"
    assert cli.main(["--runs", str(runs), "--steps", str(steps), "--target", "80",
                     "--out", str(out)]) == 0
    text = (tmp_path / "tta.md").read_text()
    assert text.splitlines()[2].startswith("Reproduce: `python -m launch.time_to_accuracy")
    assert "**Measured**" in text and "**Combined**" in text
    assert "| 2 | dasgd d=1 | 2/2 | 30 " in text and "≥ 1.5 [" in text
    report = json.loads((tmp_path / "tta.json").read_text())
    assert report["steps_provenance"] == {"commit": "abc"} and report["provenance"]["command"]
    assert (tmp_path / "tta.png").stat().st_size > 1000


@pytest.mark.parametrize("runs_text, bench, message", [
    ("", BENCH, "no finished multi-rank (D1) run"),
    ("not json\n", BENCH, "is not JSON lines"),
    (json.dumps(run("sync", 8, 0, 10)) + "\n", BENCH, "nothing to combine"),
    (json.dumps(RUNS[0]) + "\n", {"rows": "x"}, "is not launch.bench_nodes' JSON"),
])
def test_missing_or_bad_input_is_one_line_exit_2(tmp_path, capsys, runs_text, bench,
                                                 message):
    runs, steps = tmp_path / "runs.jsonl", tmp_path / "steps.json"
    runs.write_text(runs_text)
    steps.write_text(json.dumps(bench))
    assert cli.main(["--runs", str(runs), "--steps", str(steps),
                     "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.glob("t.*"))
    with pytest.raises(MissingData):
        read_runs(str(tmp_path / "absent.jsonl"))
