"""Device-time compute of the step benchmarks (experiments/bench/device_time.py) and the
sanity checks that stop a benchmark from publishing an impossible result. Mechanism checks,
not speed: the speed is measured by `launch.bench_comm` / `launch.bench_nodes`."""
import json
import sys
import time

import pytest
import torch
from torch import nn

from experiments.bench import sanity
from experiments.bench.device_time import (FORWARD_SHARE, GRADIENT_VALUE, device_time_forward,
                                           parse_compute)
from tests.mpi_util import run_ranks


def test_parse_compute():
    assert parse_compute("real") is None
    assert parse_compute("device:12.5") == pytest.approx(0.0125)
    for bad in ("device", "device:-1", "gpu:3", "device:ms"):
        with pytest.raises(ValueError, match="--compute"):
            parse_compute(bad)


def test_backward_hands_each_layer_its_gradients_in_reverse_order_over_the_device_time():
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 7), nn.Linear(7, 3))
    step_s = 0.3
    device_time_forward(model, step_s)
    fired = []
    accumulators = []  # kept alive, as Horovod keeps them
    for index, layer in enumerate(m for m in model if isinstance(m, nn.Linear)):
        for p in layer.parameters():
            # Where Horovod's DistributedOptimizer hooks: the parameter's AccumulateGrad.
            acc = p.expand_as(p).grad_fn.next_functions[0][0]
            acc.register_hook(lambda *_, i=index: fired.append((i, time.perf_counter())))
            accumulators.append(acc)
    start = time.perf_counter()
    out = model(torch.randn(2, 5))
    forward_done = time.perf_counter()
    out.backward()
    assert forward_done - start >= FORWARD_SHARE * step_s
    layers = [i for i, _ in fired]
    assert layers == [2, 2, 1, 1, 0, 0]  # weight and bias of each layer, last layer first
    per_layer = (1 - FORWARD_SHARE) * step_s / 3
    times = [t - forward_done for _, t in fired]
    for k, (i, t) in enumerate(zip(layers[::2], times[::2])):
        assert t >= (k + 1) * per_layer  # each layer waits its share before its gradients
    for p in model.parameters():
        assert p.grad.shape == p.shape and p.grad.dtype == p.dtype
        assert torch.all(p.grad == GRADIENT_VALUE)


def test_sanity_checks_trip_on_fabricated_results():
    none = [0.100, 0.102, 0.099, 0.101, 0.100, 0.103, 0.098, 0.100]
    sane = {"none": none, "sync": [t * 1.6 for t in none], "dasgd": [t * 1.02 for t in none]}
    assert sanity.problems(sane, hidden_fraction=0.97, load_start=0.5, cores=2) == []
    faster = dict(sane, local=[t * 0.8 for t in none])
    (line,) = sanity.problems(faster)
    assert line.startswith("local steps faster than `none` beyond the noise")
    (line,) = sanity.problems(sane, hidden_fraction=1.3)
    assert line.startswith("hidden fraction 1.30 > 1")
    (line,) = sanity.problems(sane, load_start=5.2, cores=2)
    assert "loaded by other work" in line
    with pytest.raises(sanity.BenchmarkInsane, match="and 2 more"):
        sanity.check(faster, hidden_fraction=1.3, load_start=5.2, cores=2)
    # A strategy as fast as `none` within the noise is not an error.
    noisy = dict(sane, local=[t * f for t, f in zip(none, (0.98, 1.01, 0.99, 1.02, 0.97,
                                                           1.0, 1.01, 0.99))])
    assert sanity.problems(noisy) == []


def test_a_loaded_machine_stops_the_benchmark_in_one_line(tmp_path, monkeypatch):
    from launch import bench_comm
    monkeypatch.setattr(bench_comm, "start", lambda: {"time": time.time(), "load": [9.0] * 3})
    with pytest.raises(sanity.BenchmarkInsane, match="loaded by other work"):
        bench_comm.main(["--json", str(tmp_path / "b.json")])


# The step of a 2-rank job that does not communicate is the device time plus the host's
# share (optimizer step, the surrogate's cheap products): at least STEP_S by construction,
# and its least disturbed step well under 1.5x on any machine that can run the suite.
STEP_S = 0.06


@pytest.mark.mpi
def test_two_ranks_step_at_the_device_time_without_communication(tmp_path):
    out = tmp_path / "steps.json"
    run_ranks(2, [sys.executable, "-m", "experiments.bench.comm", "--strategies", "none",
                  "--out", out, "--model", "small_cnn", "--batch-size", "4",
                  "--compute", f"device:{STEP_S * 1000:g}", "--rounds", "2",
                  "--block-steps", "4"], timeout=240)
    result = json.loads(out.read_text())
    assert result["compute"] == f"device:{STEP_S * 1000:g}"
    assert STEP_S <= result["step_s_min"]["none"] <= 1.5 * STEP_S, result["step_s_min"]
    assert result["step_s"]["none"] >= STEP_S
