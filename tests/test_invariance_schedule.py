"""When the layer computes batch statistics: stats_every=k (refresh steps, stale steps, warm
start, phase across state_dict and resume), freeze (the authors' schedule), and the
sampling stride picked from a statistics budget."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.invariance import InvConv2d, InvLinear, options

OPS = torch.ops.invariance


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one intra-op thread (tests/conftest.py says why)."""


def count_refreshes(layer):
    """Records the training steps (0-based) on which `layer` computes batch statistics."""
    steps, moments = [], layer._moments

    def counting(xhat):
        steps.append(int(layer.num_batches_tracked))
        return moments(xhat)
    layer._moments = counting
    return steps


# ---- k = 1 is the layer that refreshes on every step ------------------------------------

def always_refresh_step(weight, bias, buffers, x, eps=1e-5, n_iter=5, momentum=0.1):
    """One training forward of InvConv2d(4, 6, 3, padding=1) written out with the ops:
    statistics on every step, EMA of the buffers, fold, conv."""
    xhat = OPS.sample_norm(x, 3, eps)
    mean, second = OPS.im2col_moments(xhat, [3, 3], [1, 1], [1, 1], [3, 3], 1, 4)
    eye = torch.eye(mean.shape[-1], dtype=x.dtype)
    sigma = torch.baddbmm(second + eps * eye, mean.unsqueeze(-1), mean.unsqueeze(-2), alpha=-1)
    whitening = OPS.inv_sqrt_spectral(sigma, n_iter)
    with torch.no_grad():
        buffers["running_mean"].mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
        buffers["running_whitening"].mul_(1 - momentum).add_(whitening.detach(),
                                                             alpha=momentum)
    w, b = OPS.fold_weights(weight, whitening, mean, bias, 1, True)
    return F.conv2d(xhat, w, b, 1, 1)


def test_stats_every_1_is_bit_identical_to_refreshing_every_step():
    torch.manual_seed(0)
    layer = InvConv2d(4, 6, 3, padding=1, method="spectral", stats_every=1)
    assert layer.warm_start == 0
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    buffers = {k: v.clone() for k, v in layer.state_dict().items() if k.startswith("running")}
    opt_a = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9)
    opt_b = torch.optim.SGD([weight, bias], lr=0.5, momentum=0.9)
    for step in range(4):
        x = torch.randn(3, 4, 9, 9) * (step + 1)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = layer(xa)
        yb = always_refresh_step(weight, bias, buffers, xb)
        assert torch.equal(ya, yb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        assert torch.equal(xa.grad, xb.grad)
        assert torch.equal(layer.weight.grad, weight.grad)
        assert torch.equal(layer.bias.grad, bias.grad)
        for name, value in buffers.items():
            assert torch.equal(getattr(layer, name), value)
        opt_a.step()
        opt_b.step()
        opt_a.zero_grad()
        opt_b.zero_grad()
    assert int(layer.num_batches_tracked) == 4


# ---- k > 1 --------------------------------------------------------------------------------

def test_warm_start_length():
    # (1 - momentum)^n <= 5 %: the identity initialisation has faded from the buffers
    assert options.warm_start_steps(10, 0.1) == 29 and 0.9 ** 29 <= 0.05 < 0.9 ** 28
    assert options.warm_start_steps(4, 0.5) == 5
    assert options.warm_start_steps(1, 0.1) == 0
    assert InvLinear(8, 3, stats_every=10).warm_start == 29


def test_statistics_exactly_on_refresh_steps_and_stale_steps_keep_the_buffers():
    torch.manual_seed(1)
    layer = InvConv2d(4, 4, 3, padding=1, stats_every=4, momentum=0.5)
    refreshed = count_refreshes(layer)
    x = torch.randn(2, 4, 8, 8)
    for step in range(20):
        before = (layer.running_mean.clone(), layer.running_whitening.clone())
        layer(x * (1 + step)).sum().backward()
        moved = not torch.equal(before[0], layer.running_mean)
        assert moved == (step in refreshed)
        if not moved:
            assert torch.equal(before[1], layer.running_whitening)
    assert refreshed == [0, 1, 2, 3, 4, 8, 12, 16]  # 5 warm-start steps, then every 4th
    assert int(layer.num_batches_tracked) == 20
    layer.eval()
    layer(x)  # eval never computes statistics, nor counts
    assert len(refreshed) == 8 and int(layer.num_batches_tracked) == 20


def _graph_ops(tensor):
    """Names of every autograd node behind `tensor`."""
    seen, stack, names = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(n for n, _ in node.next_functions)
    return names


def _statistics_nodes(tensor):
    return {name for name in ("Moments", "SpectralInvSqrt", "NewtonInvSqrt")
            if any(name in n for n in _graph_ops(tensor))}


def test_stale_step_folds_the_buffers_without_gradient_through_statistics():
    torch.manual_seed(2)
    layer = InvConv2d(4, 5, 3, padding=1, stats_every=3, momentum=0.5).double()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    for _ in range(6):                      # warm start (5) and one refresh
        layer(x)
    layer.num_batches_tracked.fill_(7)      # 7 % 3 != 0: a stale step
    xa = x.clone().requires_grad_()
    y = layer(xa)
    refresh = InvConv2d(4, 5, 3, padding=1).double()(x.clone().requires_grad_())
    assert {"Moments", "SpectralInvSqrt"} <= _statistics_nodes(refresh)
    assert not _statistics_nodes(y)
    # the same step written out: normalise, fold the running buffers, conv
    xb = x.clone().requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    xhat = OPS.sample_norm(xb, 3, layer.eps)
    wt, bt = OPS.fold_weights(w, layer.running_whitening, layer.running_mean, b, 1, True)
    expected = F.conv2d(xhat, wt, bt, 1, 1)
    assert torch.allclose(y, expected, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g)
    assert torch.allclose(xa.grad, xb.grad, rtol=0, atol=1e-12)
    assert torch.allclose(layer.weight.grad, w.grad, rtol=0, atol=1e-12)
    assert torch.allclose(layer.bias.grad, b.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("step,kind", [(9, "refresh"), (10, "stale")])
def test_gradcheck_on_refresh_and_stale_steps(step, kind):
    torch.manual_seed(3)
    layer = InvConv2d(4, 3, 3, padding=1, block=2, stats_every=3, momentum=0.5).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for _ in range(6):
        layer(x + torch.randn_like(x))
    assert options.refreshes_statistics(step, 3, layer.warm_start, False) == (kind == "refresh")

    def f(inp, weight, bias):
        layer.num_batches_tracked.fill_(step)
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (inp,))
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (xg, w, b), atol=1e-6, rtol=1e-4, fast_mode=True)
    lin = InvLinear(6, 3, block=3, stats_every=3, momentum=0.5).double()
    xl = torch.randn(2, 3, 6, dtype=torch.float64)
    for _ in range(6):
        lin(xl + torch.randn_like(xl))

    def g(inp):
        lin.num_batches_tracked.fill_(step)
        return lin(inp)
    assert torch.autograd.gradcheck(g, (xl.clone().requires_grad_(),), fast_mode=True)


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(InvConv2d(3, 4, 3, padding=1, stats_every=3, momentum=0.5), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         InvLinear(16, 5, stats_every=3, momentum=0.5))


def _train(net, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()


def test_state_dict_round_trip_keeps_the_phase():
    a = InvConv2d(4, 4, 3, padding=1, stats_every=4, momentum=0.5)
    x = torch.randn(2, 4, 6, 6)
    for _ in range(10):                     # stops inside a period (next: steps 10, 11 stale)
        a(x)
    b = InvConv2d(4, 4, 3, padding=1, stats_every=4, momentum=0.5)
    b.load_state_dict(a.state_dict())
    steps_a, steps_b = count_refreshes(a), count_refreshes(b)
    for _ in range(7):
        assert torch.equal(a(x), b(x))
    assert steps_a == steps_b == [12, 16]


def test_resume_in_the_middle_of_a_period_is_bit_exact(tmp_path):
    gen = torch.Generator().manual_seed(4)
    batches = [(torch.randn(4, 3, 6, 6, generator=gen), torch.randint(0, 5, (4,), generator=gen))
               for _ in range(13)]
    straight = _net(5)
    opt = torch.optim.SGD(straight.parameters(), lr=0.1, momentum=0.9)
    _train(straight, opt, batches)
    first = _net(5)
    opt = torch.optim.SGD(first.parameters(), lr=0.1, momentum=0.9)
    _train(first, opt, batches[:7])         # 5 warm-start steps + 2: resumes on a stale step
    path = tmp_path / "ckpt.pt"
    torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, path)
    resumed = _net(6)                       # other initial values: all must come from the file
    opt = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    saved = torch.load(path)
    resumed.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    _train(resumed, opt, batches[7:])
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_freeze_schedule_is_the_authors():
    """The authors increment their counter before the test `counter % 1000 <= 100`."""
    counter, authors = 0, []
    for step in range(2101):
        counter += 1
        if counter % 1000 <= 100:
            authors.append(step)
    layer = InvLinear(4, 2, freeze=True, momentum=0.5)
    ours = count_refreshes(layer)
    x = torch.randn(3, 4)
    with torch.no_grad():
        for _ in range(2101):
            layer(x)
    assert ours == authors
    one_based = [s + 1 for s in ours]
    assert one_based == list(range(1, 101)) + list(range(1000, 1101)) + list(range(2000, 2101))


@pytest.mark.parametrize("kwargs,match", [
    (dict(stats_every=0), "stats_every"), (dict(stats_every=2.0), "stats_every"),
    (dict(stats_every=True), "stats_every"), (dict(stats_every=4, freeze=True), "freeze"),
    (dict(stats_every=4, momentum=0.0), "momentum"),
    (dict(sampling_stride="fast"), "sampling_stride"),
    (dict(sampling_stride="auto", stats_budget=0), "stats_budget"),
    (dict(stats_budget=-1.0), "stats_budget"),
])
def test_bad_schedule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        InvConv2d(4, 4, 3, **kwargs)
    assert "\n" not in str(info.value)


# ---- the statistics budget ----------------------------------------------------------------

def _cost_ratio(layer, shape):
    """Multiply-adds of X^T X over those of the conv's forward, from the real geometry."""
    n, c, h, w = shape
    sample = [layer.sampling_stride * s for s in layer.stride]
    patches = OPS.sampled_patches(torch.zeros(shape), list(layer.kernel_size),
                                  list(layer.padding), list(layer.dilation), sample,
                                  layer.groups, layer.block)
    out_hw = [(size + 2 * p - d * (k - 1) - 1) // t + 1 for size, p, d, k, t in
              zip((h, w), layer.padding, layer.dilation, layer.kernel_size, layer.stride)]
    conv = n * out_hw[0] * out_hw[1] * layer.out_channels * layer.weight[0].numel()
    return patches.shape[0] * patches.shape[1] * patches.shape[2] ** 2 / conv


@pytest.mark.parametrize("cin,cout,k,stride,budget,expected", [
    (64, 64, 3, 1, 0.25, 6), (64, 64, 3, 1, 1.0, 3), (64, 128, 3, 2, 0.1, 7),
    (64, 128, 1, 2, 0.25, 2), (3, 64, 3, 1, 0.25, 2), (3, 64, 3, 1, 0.5, 1),
    (256, 512, 3, 1, 0.05, 5),
])
def test_auto_sampling_stride_meets_the_budget(cin, cout, k, stride, budget, expected):
    layer = InvConv2d(cin, cout, k, stride=stride, padding=k // 2, sampling_stride="auto",
                      stats_budget=budget)
    s = layer.sampling_stride
    assert s == expected
    model = lambda s: k * k * layer.block / (s * s * cout)  # noqa: E731  the documented model
    assert model(s) <= budget and (s == 1 or model(s - 1) > budget)
    # on an input the sampling grid tiles exactly, the real cost ratio is the model's
    size = 6 * s * stride
    assert math.isclose(_cost_ratio(layer, (2, cin, size, size)), model(s), rel_tol=1e-9)


def test_fixed_sampling_stride_ignores_the_budget():
    assert InvConv2d(64, 64, 3, padding=1).sampling_stride == 3
    assert InvConv2d(64, 64, 3, padding=1, stats_budget=0.01).sampling_stride == 3
    assert math.isclose(InvConv2d(8, 8, 3, sampling_stride="auto").stats_budget,
                        options.DEFAULT_STATS_BUDGET)
