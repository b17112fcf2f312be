"""The refresh rules of the stale steps (refresh="ema" | "last" | "center" | "batch"): what
each folds, gradients on refresh and stale steps, state_dict and resume mid-period, eval,
the cross-rank path, old checkpoints, and a short vit_tiny run that does not collapse."""
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from toolkit.invariance import InvConv2d, InvLinear, ops
from toolkit.invariance.modules import _Whitening

OPS = torch.ops.invariance
RULES = ("last", "center", "batch", "sampled")
# momentum 0.5: the warm start is 5 steps (0.5^5 <= 5 %), so stale steps come early
MOMENTUM, WARM = 0.5, 5


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one intra-op thread (tests/conftest.py says why)."""


def conv(rule, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return InvConv2d(4, 6, 3, padding=1, method="spectral", stats_every=3, refresh=rule,
                     momentum=MOMENTUM, **kw).to(dtype)


def linear(rule, dtype=torch.float32):
    torch.manual_seed(0)
    return InvLinear(8, 5, block=4, stats_every=3, refresh=rule, momentum=MOMENTUM).to(dtype)


def batch_statistics(layer, x):
    """(mean, D) of x's batch, as a refresh step of `layer` computes them."""
    xhat = OPS.sample_norm(x, 3, layer.eps)
    mean, second = layer._moments(xhat)
    return mean, layer._inverse_sqrt(mean, second)


def run_to_stale(layer):
    """Training forwards up to the first stale step (steps 0..WARM-1 refresh; step WARM = 5
    is stale as 5 % 3 != 0)."""
    for step in range(WARM):
        layer(torch.randn(3, 4, 7, 7, dtype=layer.weight.dtype) * (step + 1))
    assert not layer._use_batch_statistics()
    return layer


def test_ema_state_dict_is_the_one_it_always_was():
    """The default rule keeps exactly the old buffers: old checkpoints load, new ones load
    into old code."""
    keys = set(InvConv2d(4, 6, 3).state_dict())
    assert keys == {"weight", "bias", "running_mean", "running_whitening",
                    "num_batches_tracked"}
    assert set(InvConv2d(4, 6, 3, stats_every=2, refresh="ema").state_dict()) == keys
    assert set(conv("batch").state_dict()) == set(conv("center").state_dict()) == keys
    assert keys | {"refresh_mean", "refresh_whitening"} == set(conv("last").state_dict())


def test_ema_rule_is_bit_identical_to_the_default_layer():
    a, b = conv("ema"), InvConv2d(4, 6, 3, padding=1, method="spectral", stats_every=3,
                                  momentum=MOMENTUM)
    b.load_state_dict(a.state_dict())
    for step in range(9):
        x = torch.randn(3, 4, 7, 7) * (step + 1)
        ya, yb = a(x), b(x)
        ya.square().sum().backward()
        yb.square().sum().backward()
        assert torch.equal(ya, yb) and torch.equal(a.weight.grad, b.weight.grad)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("rule", RULES)
def test_a_stale_step_folds_what_its_rule_says(rule):
    layer = conv(rule)
    previous = None
    for step in range(WARM):
        x = torch.randn(3, 4, 7, 7) * (step + 1)
        previous = batch_statistics(layer, x)
        layer(x)
    running = (layer.running_mean.clone(), layer.running_whitening.clone())
    x = torch.randn(3, 4, 7, 7)
    own = batch_statistics(layer, x)
    xhat = OPS.sample_norm(x, 3, layer.eps)
    if rule == "sampled":
        mean, second = layer._sparse_moments(xhat)
        own = (mean, layer._inverse_sqrt(mean, second))
    expected = {"last": previous, "center": (own[0], running[1])}.get(rule, own)
    w, b = OPS.fold_weights(layer.weight, expected[1], expected[0], layer.bias, 1, True)
    y = layer(x)
    assert torch.allclose(y, F.conv2d(xhat, w, b, 1, 1), atol=1e-5)
    # the running buffers (eval mode's) move on refresh steps only, for every rule
    assert torch.equal(layer.running_mean, running[0])
    assert torch.equal(layer.running_whitening, running[1])


@pytest.mark.parametrize("rule", RULES)
def test_gradient_through_the_statistics_only_where_the_rule_has_it(rule):
    layer = run_to_stale(conv(rule))
    x = torch.randn(3, 4, 7, 7, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.weight.grad is not None and x.grad is not None
    # the batch rule holds its statistics fixed: x's gradient is the one of the frozen fold
    if rule == "batch":
        mean, whitening = batch_statistics(layer, x.detach())
        x2 = x.detach().clone().requires_grad_()
        w, b = OPS.fold_weights(layer.weight.detach(), whitening, mean, layer.bias.detach(),
                                1, True)
        F.conv2d(OPS.sample_norm(x2, 3, layer.eps), w, b, 1, 1).square().sum().backward()
        assert torch.allclose(x.grad, x2.grad, atol=1e-4)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("make", [conv, linear])
def test_gradcheck_on_refresh_and_stale_steps(rule, make):
    """In x, W and b; on a "batch" stale step in W and b only: its statistics depend on x
    but are held fixed in the backward by design."""
    layer = make(rule, torch.float64)
    shape = (3, 4, 5, 5) if make is conv else (4, 3, 8)
    for step in range(WARM + 2):  # refresh steps 0..4, stale 5, refresh 6
        if step in (0, WARM, WARM + 1):
            assert layer._use_batch_statistics() == (step != WARM)
            x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
            state = {k: v.clone() for k, v in layer.state_dict().items()}

            def f(w, b, x=x):  # every evaluation is the same step, from copies of the state
                values = {**{k: v.clone() for k, v in state.items()}, "weight": w, "bias": b}
                return torch.func.functional_call(layer, values, (x,))
            w = layer.weight.detach().clone().requires_grad_()
            b = layer.bias.detach().clone().requires_grad_()
            if rule == "batch" and step == WARM:
                assert torch.autograd.gradcheck(lambda w, b: f(w, b, x.detach()), (w, b),
                                                fast_mode=True)
            else:
                assert torch.autograd.gradcheck(lambda w, b, x: f(w, b, x), (w, b, x),
                                                fast_mode=True)
        layer(torch.randn(shape, dtype=torch.float64))


def test_sampled_patch_mean_matches_the_moments_and_gradchecks():
    x = torch.randn(2, 4, 7, 8, dtype=torch.float64, requires_grad=True)
    geometry = ((3, 3), (1, 1), (1, 1), (2, 3), 2, 2)
    mean, _ = ops.im2col_moments(x, *geometry)
    assert torch.equal(ops.sampled_patch_mean(x, *geometry), mean)
    assert torch.autograd.gradcheck(lambda x: ops.sampled_patch_mean(x, *geometry), (x,))


@pytest.mark.parametrize("rule", RULES)
def test_state_dict_round_trip_and_bit_exact_resume_mid_period(rule):
    a = conv(rule)
    xs = [torch.randn(3, 4, 7, 7) * (i + 1) for i in range(11)]
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    for x in xs[:WARM + 2]:  # stops one step into a period
        opt_a.zero_grad()
        a(x).square().mean().backward()
        opt_a.step()
    b = conv(rule)
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    for x in xs[WARM + 2:]:
        outs = []
        for layer, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            y = layer(x)
            y.square().mean().backward()
            opt.step()
            outs.append(y)
        assert torch.equal(*outs)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("rule", RULES)
def test_eval_folds_the_running_buffers(rule):
    layer = run_to_stale(conv(rule)).eval()
    x = torch.randn(2, 4, 7, 7)
    w, b = OPS.fold_weights(layer.weight, layer.running_whitening, layer.running_mean,
                            layer.bias, 1, True)
    tracked = int(layer.num_batches_tracked)
    with torch.no_grad():
        assert torch.allclose(layer(x), F.conv2d(OPS.sample_norm(x, 3, 1e-5), w, b, 1, 1),
                              atol=1e-6)
    assert int(layer.num_batches_tracked) == tracked


def test_bad_refresh_values_are_one_line_errors():
    with pytest.raises(ValueError, match="refresh must be one of ema, last, center, batch, sampled"):
        InvConv2d(4, 4, 3, stats_every=2, refresh="lazy")
    with pytest.raises(ValueError, match="needs stale steps"):
        InvLinear(8, 4, refresh="last")
    InvLinear(8, 4, freeze=True, refresh="last")  # freeze has stale steps


# ---- across ranks (sync=True) -----------------------------------------------------------

def _rank(rank, port, full_x, outputs):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        for rule in SYNC_RULES:
            layer = conv(rule, torch.float64, sync=True)
            for x in full_x:
                half = x.chunk(2)[rank].clone().requires_grad_()
                y = layer(half)
                y.square().sum().backward()
            outputs[rule, rank] = y.detach()
    finally:
        dist.destroy_process_group()


SYNC_RULES = ("center", "batch", "sampled")  # the rules with statistics on stale steps


def test_sync_averages_the_stale_statistics_over_ranks():
    """Two gloo ranks with half the batch each fold what one process folds for the whole
    batch (refresh and stale steps; the last input is a stale step)."""
    import torch.multiprocessing as mp
    torch.manual_seed(1)
    xs = [torch.randn(4, 4, 7, 7, dtype=torch.float64) * (i + 1) for i in range(WARM + 1)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outputs = mp.Manager().dict()
    mp.spawn(_rank, args=(port, xs, outputs), nprocs=2, join=True)
    for rule in SYNC_RULES:
        single = conv(rule, torch.float64)
        for x in xs:
            y = single(x)
        both = torch.cat([outputs[rule, 0], outputs[rule, 1]])
        assert torch.allclose(both, y.detach(), atol=1e-9), rule


# ---- old checkpoints, and a short vit_tiny run ------------------------------------------

FASHION = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not os.path.isdir(FASHION),
                                   reason="Debian's dataset-fashion-mnist is not installed")


@needs_fashion
def test_checkpoint_without_the_option_resumes_with_ema_and_is_refused_otherwise(tmp_path):
    from tests.train_util import train_single
    out = tmp_path / "run"
    common = ("--dataset", "fashion_mnist", "--train-subset", "64", "--val-size", "16",
              "--batch-size", "16", "--model", "small_cnn", "--threads", "1",
              "--inv-stats-every", "2", "--strategy", "none", "--out", out)
    first = train_single(*common, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    (ckpt,) = (out / "checkpoints").glob("*.pt") if (out / "checkpoints").is_dir() else \
        out.glob("**/*.pt")
    state = torch.load(ckpt, weights_only=False)
    del state["config"]["inv_refresh"]  # as written before the option existed
    torch.save(state, ckpt)
    refused = train_single(*common, "--epochs", "2", "--resume", "latest",
                           "--inv-refresh", "last")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "inv_refresh" in lines[0] and "Traceback" not in refused.stderr
    resumed = train_single(*common, "--epochs", "2", "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-2000:]


@needs_fashion
def test_vit_tiny_with_the_claims_rule_learns_fashion_mnist():
    """40 steps of batch 8 with statistics every 10th step past the warm start (29 steps),
    with the rule the claims family R checks: it learns (chance is 0.1)."""
    from experiments.studies import staleness
    from experiments.studies.plan import REFRESH_RULE
    train, val = staleness.fashion_splits(640, 200)
    result = staleness.trial("vit_tiny", 0.1, REFRESH_RULE, 40, train, val, batch=8)
    assert not result["diverged"] and result["val_acc"] > 0.3, result["val_acc"]
