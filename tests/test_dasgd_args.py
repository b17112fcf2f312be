"""Argument checking of the strategies and the benchmark arithmetic (no processes needed)."""
import pytest
import torch

from experiments.bench.comm import format_rate, rate_bits_per_s, ratios
from toolkit.job.startup import apply_stall_defaults, comm_nice, comm_timeout_s
from toolkit.strategies import STRATEGY_NAMES, make_strategy


def _model_and_optimizer():
    model = torch.nn.Linear(2, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match="unknown strategy 'dasdg'.*none, sync, local, dasgd"):
        make_strategy("dasdg", *_model_and_optimizer())
    assert STRATEGY_NAMES == ("none", "sync", "local", "dasgd")


@pytest.mark.parametrize("kwargs,message", [
    ({"period": 0}, "period must be an integer >= 1, got 0"),
    ({"delay": -1}, "delay must be an integer >= 0 or auto, got -1"),
    ({"delay": "soon"}, "delay must be an integer >= 0 or auto, got 'soon'"),
    ({"avg_dtype": "int8"}, "avg_dtype must be one of fp32, bf16, fp16, got 'int8'"),
    ({"fragments": 0}, "fragments must be an integer >= 1, got 0"),
    ({"warmup_steps": 1.5}, "warmup_steps must be an integer >= 0, got 1.5"),
    ({"period": True}, "period must be an integer >= 1, got True")])
def test_bad_period_delay_warmup(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_strategy("dasgd", *_model_and_optimizer(), **kwargs)


def test_each_strategy_gets_the_options_its_class_declares(monkeypatch):
    """make_strategy keeps no table of options: a class declares them as the keyword-only
    parameters of its __init__, and gets only those (with its own defaults)."""
    from toolkit.strategies import (STRATEGIES, DaSGD, LocalSGD, NoCommunication, Strategy,
                                    SyncSGD)
    assert NoCommunication.options() == SyncSGD.options() == ()
    assert LocalSGD.options() == ("period", "warmup_steps")
    assert {"period", "delay", "warmup_steps", "avg_dtype", "fragments"} <= set(DaSGD.options())

    class Probe(Strategy):  # (no Horovod: it does not call Strategy.__init__)
        def __init__(self, model, optimizer, *, period=7):
            self.period = period

    assert Probe.options() == ("period",)
    monkeypatch.setitem(STRATEGIES, "probe", Probe)
    made = make_strategy("probe", *_model_and_optimizer(), delay=3, avg_dtype="bf16")
    assert made.period == 7  # the other strategies' options are dropped, its default kept
    assert make_strategy("probe", *_model_and_optimizer(), period=2).period == 2
    with pytest.raises(TypeError, match="no strategy takes the option.* colour"):
        make_strategy("probe", *_model_and_optimizer(), colour="red")


def test_stall_defaults_respect_the_user():
    env = {"HOROVOD_STALL_CHECK_TIME_SECONDS": "7"}
    apply_stall_defaults(env)
    assert env["HOROVOD_STALL_CHECK_TIME_SECONDS"] == "7"
    assert env["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] == "330"
    assert comm_timeout_s({"TOOLKIT_COMM_TIMEOUT_S": "12.5"}) == 12.5
    with pytest.raises(ValueError, match="TOOLKIT_COMM_TIMEOUT_S must be a number"):
        comm_timeout_s({"TOOLKIT_COMM_TIMEOUT_S": "soon"})
    with pytest.raises(ValueError, match="TOOLKIT_COMM_TIMEOUT_S must be > 0"):
        comm_timeout_s({"TOOLKIT_COMM_TIMEOUT_S": "0"})


def test_rates_and_ratios():
    assert rate_bits_per_s("800mbit") == 8e8
    assert rate_bits_per_s("1.5gbit") == 1.5e9
    assert format_rate(3.014e8) == "301mbit"
    for bad in ("fast", "800", "-5mbit", "0mbit", "800mb"):
        with pytest.raises(ValueError, match="--rate must look like 800mbit"):
            rate_bits_per_s(bad)
    r = ratios({"none": 1.0, "sync": 1.8, "local": 2.0, "dasgd": 1.04})
    assert r["dasgd_over_none"] == pytest.approx(1.04)
    assert r["sync_over_none"] == pytest.approx(1.8)
    assert r["hidden_fraction"] == pytest.approx(0.95)
    assert ratios({"none": 1.0, "sync": 0.9, "dasgd": 1.0})["hidden_fraction"] is None


def test_comm_nice_setting():
    assert comm_nice({}) == 0  # off by default: measured no gain, and it slows sync
    assert comm_nice({"TOOLKIT_COMM_NICE": "19"}) == 19
    for bad in ("high", "20", "-1"):
        with pytest.raises(ValueError, match="TOOLKIT_COMM_NICE must"):
            comm_nice({"TOOLKIT_COMM_NICE": bad})


def test_cycle_time_default_only_for_strategies_that_never_block_on_the_average():
    from toolkit.job.startup import apply_cycle_time_default
    for name, delay in (("none", 1), ("dasgd", 1), ("dasgd", 3)):
        env = {}
        assert apply_cycle_time_default(name, delay, env) == "5"
        assert env == {"HOROVOD_CYCLE_TIME": "5"}
    for name, delay in (("sync", 1), ("local", 0), ("dasgd", 0), (None, 1)):
        env = {}
        assert apply_cycle_time_default(name, delay, env) is None and env == {}
    env = {"HOROVOD_CYCLE_TIME": "0.5"}  # the user's choice wins
    assert apply_cycle_time_default("dasgd", 1, env) == "0.5"


def test_projection_fits_alpha_beta_from_sizes_and_chooses_d_like_auto():
    from toolkit.scaling import projection as pj
    from toolkit.scaling.calibration import Measured
    # t = 2 alpha + n / beta on 2 workers: alpha = 0.5 ms, beta = 100 MB/s
    points = [(2, n, 1e-3 + n / 1e8) for n in (1e6, 4e6, 16e6)]
    measured = Measured(compute_s=1.0, points=points, workers=2, bytes=16e6, sync_s=1.2,
                        dasgd_s=1.05, delay=1)
    model, notes = pj.calibrate(measured, delay="auto")
    assert model.alpha == pytest.approx(5e-4) and model.beta == pytest.approx(1e8)
    assert "fitted" in notes[0]
    step = model.compute_s + model.dasgd_overhead_s  # what auto measures as the step
    rows = pj.project(model, [8, 256, 4096])
    for row in rows:
        d, t = row["dasgd_delay"], row["allreduce_s"]
        assert d == min(8, max(1, -(-t // step)))  # smallest integer with t <= d * step
        assert row["dasgd_efficiency"] > 0.9
    assert [r["dasgd_delay"] for r in rows] == [1, 1, 5]
    for _, _, value, modelled in pj.check_rows(model, measured):
        assert modelled == pytest.approx(value, rel=0.05)
