"""Behaviour of InvConv2d / InvLinear as modules: arguments, eval cache, state_dict,
freezing, sync in a single process, convert_model and the layer benchmark's code path."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.mpi_util import REPO
from toolkit.invariance import InvConv2d, InvLinear, convert_model


@pytest.mark.parametrize("kwargs,name", [
    (dict(kernel_size=0), "kernel_size"), (dict(stride=0), "stride"),
    (dict(padding=-1), "padding"), (dict(dilation=(1, 0)), "dilation"),
    (dict(groups=3), "groups"), (dict(block=0), "block"),
    (dict(sampling_stride=0), "sampling_stride"), (dict(eps=0.0), "eps"),
    (dict(n_iter=0), "n_iter"), (dict(momentum=1.5), "momentum"),
    (dict(norm="batch"), "norm"), (dict(freeze="yes"), "freeze"), (dict(sync=1), "sync"),
    (dict(method="exact"), "method"), (dict(bias=None), "bias"),
    (dict(in_channels=0), "in_channels"), (dict(out_channels=2.5), "out_channels"),
])
def test_conv_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = dict(in_channels=4, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        InvConv2d(**args)


@pytest.mark.parametrize("kwargs,name", [
    (dict(block=0), "block"), (dict(norm="local"), "norm"), (dict(in_features=1), "in_features"),
    (dict(n_iter=-1), "n_iter"), (dict(momentum=-0.1), "momentum"),
])
def test_linear_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = dict(in_features=8, out_features=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        InvLinear(**args)


def test_bad_input_shapes_raise_value_error():
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        InvConv2d(4, 4, 3)(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="InvLinear expects"):
        InvLinear(8, 3)(torch.randn(2, 3, 4, 8))


def test_block_rules():
    assert InvConv2d(3, 8, 3).block == 3                       # C < block
    assert InvConv2d(96, 8, 3, block=64).block == 32           # gcd(64, 96)
    assert InvConv2d(8, 8, 3, groups=4, block=64).block == 2   # grouped: C / groups
    assert InvConv2d(128, 8, 1).d == 64
    assert InvLinear(512, 10).block == 512 and InvLinear(768, 10).block == 256
    assert InvLinear(100, 10, block=30).block == 10


def test_eval_cache_is_reused_and_invalidated():
    torch.manual_seed(0)
    layer = InvConv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    layer(x)
    layer.eval()
    with torch.no_grad():
        y1 = layer(x)
        cached = layer._eval_cache[1][0]
        y2 = layer(x)
        assert layer._eval_cache[1][0] is cached and torch.equal(y1, y2)
        layer.weight.mul_(2)                       # in-place weight change
        y3 = layer(x)
        assert layer._eval_cache[1][0] is not cached
        fresh = InvConv2d(4, 4, 3, padding=1)
        fresh.load_state_dict(layer.state_dict())
        assert not torch.allclose(y1, y3) and torch.equal(y3, fresh.eval()(x))
        layer.running_whitening.mul_(0.5)          # buffer change
        y4 = layer(x)
        assert not torch.allclose(y3, y4)
    # with gradients wanted, eval mode folds with autograd (weights get gradients)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_state_dict_round_trip():
    torch.manual_seed(1)
    a = InvConv2d(6, 4, 3, padding=1, groups=2)
    for _ in range(3):
        a(torch.randn(3, 6, 7, 7))
    b = InvConv2d(6, 4, 3, padding=1, groups=2)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"weight", "bias", "running_mean", "running_whitening",
                                   "num_batches_tracked"}
    assert int(b.num_batches_tracked) == 3
    a.eval()
    b.eval()
    x = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        b(x)  # fill b's cache, then overwrite b from a again: the cache must follow
        b.load_state_dict(a.state_dict())
        assert torch.equal(a(x), b(x))
    path_state = {k: v.clone() for k, v in a.state_dict().items()}
    lin = InvLinear(6, 2)
    lin(torch.randn(4, 6))
    lin2 = InvLinear(6, 2)
    lin2.load_state_dict(lin.state_dict())
    lin.eval()
    lin2.eval()
    with torch.no_grad():
        assert torch.equal(lin(torch.ones(1, 6) * torch.arange(6.0)),
                           lin2(torch.ones(1, 6) * torch.arange(6.0)))
    assert path_state["running_whitening"].shape == (2, 27, 27)


def test_running_statistics_ema_and_freeze():
    torch.manual_seed(2)
    layer = InvConv2d(4, 4, 3, padding=1, momentum=0.25)
    x = torch.randn(2, 4, 9, 9)
    layer(x)
    d = layer.d
    assert not torch.allclose(layer.running_whitening, torch.eye(d).expand(1, d, d))
    frozen = InvConv2d(4, 4, 3, padding=1, freeze=True)
    frozen(x)                                   # step 1: batch statistics
    assert int(frozen.num_batches_tracked) == 1
    before = frozen.running_whitening.clone()
    frozen.num_batches_tracked.fill_(500)       # step 501: running buffers
    y = frozen(x)
    assert torch.equal(frozen.running_whitening, before)
    y.sum().backward()
    assert frozen.weight.grad is not None
    frozen.num_batches_tracked.fill_(1050)      # step 1051: statistics again
    frozen(x)
    assert not torch.equal(frozen.running_whitening, before)


def test_sync_in_a_single_process_changes_nothing():
    torch.manual_seed(3)
    a = InvConv2d(4, 4, 3, padding=1, sync=True)
    b = InvConv2d(4, 4, 3, padding=1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(a(x), b(x))


def test_bias_false_keeps_the_centring():
    torch.manual_seed(4)
    layer = InvConv2d(4, 4, 3, padding=1, bias=False)
    assert layer.bias is None
    y = layer(torch.randn(3, 4, 8, 8) + 5)
    assert y.shape == (3, 4, 8, 8) and torch.isfinite(y).all()


def test_convert_model():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                        nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5))
    weight = net[3].weight.detach().clone()
    convert_model(net, block=4)
    assert isinstance(net[0], InvConv2d) and net[0].n_iter == 15
    assert isinstance(net[1], nn.Identity)
    assert isinstance(net[3], InvConv2d) and net[3].n_iter == 5 and net[3].block == 4
    assert torch.equal(net[3].weight, weight) and isinstance(net[6], InvLinear)
    net(torch.randn(2, 3, 8, 8)).sum().backward()


def test_layer_benchmark_runs_end_to_end(tmp_path):
    """The benchmark's real code path on a tiny batch (the ratios are not asserted)."""
    from launch.bench_layer import main
    out = tmp_path / "bench.json"
    result = main(["--json", str(out), "--model", "small_cnn", "--batch", "4", "--image-size",
                   "8", "--steps", "1", "--warmup", "1", "--threads", "1", "--vit-batch", "2"])
    saved = json.loads(out.read_text())
    for key in ("bn_step_s", "inv_step_s", "inv_k10_step_s", "ref_step_s", "inv_over_bn",
                "inv_over_bn_k10", "inv_fast_over_bn", "inv_over_floor", "ref_over_inv"):
        assert saved[key] > 0 and saved[key] == pytest.approx(result[key])
    assert saved["inv_over_bn_k10"] == pytest.approx(saved["inv_k10_step_s"] / saved["bn_step_s"])
    # every refresh rule timed with k = 10 on both models; the fast rule's is inv_fast_over_bn
    from launch.bench_layer import FAST_RULE, RULES
    assert set(saved["refresh_over_bn"]) == {"ema", *RULES}
    assert all(set(v) == {"small_cnn", "vit_tiny"} for v in saved["refresh_over_bn"].values())
    assert saved["inv_fast_over_bn"] == saved["refresh_over_bn"][FAST_RULE]["small_cnn"]
    assert saved["refresh_over_bn"]["ema"]["small_cnn"] == saved["inv_over_bn_k10"]
    assert saved["inv_over_floor"] == pytest.approx(saved["inv_step_s"] /
                                                    saved["floor_inv_step_s"])
    # k = 10 is timed over whole periods: one sample per round, the mean of 10 steps
    assert len(saved["samples_s"]["inv_k10"]) == 1
    # every timed model trained sanely: finite losses that did not run away
    for name, (first, last) in saved["loss_first_last"].items():
        # sampled: on 8 px images of batch 4 its grid has fewer rows than the covariance's
        # dimension, so its whitening is huge (docs/invariance-layer.md, Refresh rules)
        assert 0 < first < (1e5 if name == "inv_k10_sampled" else 1e3) and 0 < last <= 2 * first
    assert saved["provenance"]["command"].startswith("python -m launch.bench_layer --json ")
    assert saved["layers"] and {"forward_ms", "backward_ms", "share_stats", "share_inv_sqrt",
                                "share_conv"} <= set(saved["layers"][0])
    # the lower bound: one row per invariance layer, every part measured, bound below the step
    assert len(saved["floor_layers"]) == len(saved["layers"])
    assert all(v > 0 for r in saved["floor_layers"] for k, v in r.items() if k != "layer")
    assert 0 < saved["floor_inv_step_s"] and saved["floor_inv_over_bn"] == pytest.approx(
        saved["floor_inv_step_s"] / saved["bn_step_s"])


def test_layer_benchmark_refuses_to_time_a_diverging_model():
    from experiments.bench.layer import DivergedWhileTimed, make_batches, step_times

    class RunsAway(nn.Module):
        """Its loss grows with every call, whatever the optimizer does."""

        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(10))
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            wrong = torch.zeros(10)
            wrong[1:] = 3.0 * self.calls
            return (self.bias + wrong).expand(x.shape[0], 10)

    batches = [(x, torch.zeros_like(y)) for x, y in make_batches(2, 4, image_size=4)]
    with pytest.raises(DivergedWhileTimed, match="net does not train sanely while timed"):
        step_times({"net": RunsAway()}, batches, steps=3, warmup=0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    medians, _, losses = step_times({"net": net}, make_batches(2, 4, image_size=4), steps=3,
                                    warmup=0)
    assert medians["net"] > 0 and losses["net"][1] <= 2 * losses["net"][0]


def _threads_in_fresh_process(env, code):
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_small_math_threads_policy():
    """auto: all intra-op threads unless ranks-on-node x threads exceed the usable cores,
    then one; an explicit limit caps it; the env variable sets the start value; bad values
    are a ValueError naming the argument."""
    cores = len(os.sched_getaffinity(0))
    code = ("import torch; from toolkit.invariance import small_math_threads as s, "
            "set_small_math_threads as set_\n"
            f"torch.set_num_threads({cores}); a = s(); set_(1); b = s(); set_(0); c = s()\n"
            "print(a, b, c)")
    env = {k: "" for k in ("OMPI_COMM_WORLD_LOCAL_SIZE", "HOROVOD_LOCAL_SIZE",
                           "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE",
                           "TOOLKIT_SMALL_MATH_THREADS")}
    assert _threads_in_fresh_process(env, code) == [str(cores), "1", str(cores)]
    crowded = dict(env, OMPI_COMM_WORLD_LOCAL_SIZE=str(cores + 1))
    assert _threads_in_fresh_process(crowded, code)[0] == "1"
    pinned = dict(env, TOOLKIT_SMALL_MATH_THREADS="1")
    assert _threads_in_fresh_process(pinned, code)[0] == "1"
    from toolkit.invariance import set_small_math_threads
    with pytest.raises(ValueError, match="set_small_math_threads"):
        set_small_math_threads(-1)
