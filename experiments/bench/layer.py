"""Cost of the invariance layer: whole training steps and a per-layer breakdown.

step_times(): BatchNorm ResNet vs the same network with InvConv2d/InvLinear (C++ ops), with
stats_every=10 (timed over whole periods) and the pure-PyTorch reference layer
(tests/invariance_reference.py, same math), timed in interleaved rounds so that all of them
see the same machine load.
layer_table(): every invariance layer of the network timed alone on the input shape it sees
in the network, with the shares of statistics / inverse square root / conv from a profile.
"""
import copy
import math
import statistics
import time

import torch
import torch.nn.functional as F

# profiler op name -> category; only the outermost matching event of a call tree counts
CATEGORIES = {
    "invariance::sample_norm_forward": "stats", "invariance::sample_norm_backward": "stats",
    "invariance::im2col_moments": "stats",
    "invariance::chunk_moments": "stats", "invariance::sampled_patches": "stats",
    "invariance::sampled_patches_backward": "stats", "invariance::patch_moments": "stats",
    "invariance::patch_moments_backward": "stats", "invariance::local_stats_forward": "stats",
    "invariance::local_stats_backward": "stats",
    "invariance::inv_sqrt_spectral_forward": "inv_sqrt",
    "invariance::inv_sqrt_spectral_backward": "inv_sqrt",
    "invariance::inv_sqrt_newton_forward": "inv_sqrt",
    "invariance::inv_sqrt_newton_backward": "inv_sqrt",
    "invariance::fold_weights": "fold", "invariance::fold_weights_backward": "fold",
    "aten::convolution": "conv", "aten::convolution_backward": "conv",
    "aten::linear": "conv",
}


def make_batch(batch, image_size=32, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    return x, y


def make_batches(count, batch, image_size=32, classes=10, seed=0):
    """`count` different random batches: every step trains on a fresh one."""
    return [make_batch(batch, image_size, classes, seed * 1000 + i) for i in range(count)]


def train_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


# The timed models must train sanely, or the benchmark times a diverging model: at lr 0.1
# the invariance layer refreshing its statistics every 10th step runs away on the stale
# steps (ResNet-18, random batches: loss ~2.4 at the first step, 30-80 by the ninth; 0.01
# still more than doubles it). Fresh batches every step at lr 1e-3 keep every model's loss
# within a few percent of its start; the arithmetic timed is the same at any lr.
LR = 1e-3
GROWTH_LIMIT = 2.0


class DivergedWhileTimed(RuntimeError):
    """A timed model's loss is not finite or grew more than GROWTH_LIMIT x: one line."""


def check_losses(losses):
    """losses[name] = (first timed step's loss, last timed step's loss)."""
    for name, (first, last) in losses.items():
        if not (math.isfinite(first) and math.isfinite(last)) or last > GROWTH_LIMIT * first:
            raise DivergedWhileTimed(
                f"benchmark model {name} does not train sanely while timed: loss {first:.3g} "
                f"at the first timed step, {last:.3g} at the last (limit: finite and at most "
                f"{GROWTH_LIMIT:g}x); its step time would not mean anything")


def step_times(models, batches, steps=5, warmup=2, lr=LR, periods=None):
    """Median seconds per training step of each model; rounds interleave the models, every
    step trains on the next of `batches`. periods[name] = p: that model runs p consecutive
    steps per round (a whole stats_every period) and its sample is their mean. On a GPU
    (batches on CUDA) with CUDA events. Returns (medians, samples, losses): losses[name] =
    (first, last timed step's loss); DivergedWhileTimed if a model did not train sanely."""
    from experiments.bench.device import timed
    periods = periods or {}
    opts = {name: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for name, m in
            models.items()}
    position = dict.fromkeys(models, 0)
    last_loss = {}

    def one_step(name):
        x, y = batches[position[name] % len(batches)]
        position[name] += 1
        last_loss[name] = train_step(models[name], opts[name], x, y)

    for name, model in models.items():
        model.train()
        for _ in range(warmup * periods.get(name, 1)):
            one_step(name)
    times = {name: [] for name in models}
    first = {}
    for _ in range(steps):
        for name in models:
            p = periods.get(name, 1)

            def period(name=name, p=p):
                for _ in range(p):
                    one_step(name)
                    first.setdefault(name, last_loss[name])
            times[name].append(timed(period, batches[0][0].device) / p)
    losses = {name: (float(first[name]), float(last_loss[name])) for name in models}
    check_losses(losses)
    return {name: statistics.median(t) for name, t in times.items()}, times, losses


def past_warm_start(model):
    """Moves every invariance layer's step counter past its warm start (the schedule's
    phase), so that timing sees the steady state: one refresh per stats_every steps."""
    for _, layer in invariance_layers(model):
        layer.num_batches_tracked.fill_(layer.warm_start)
    return model


def invariance_layers(model):
    from toolkit.invariance import InvConv2d, InvLinear
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (InvConv2d,
                                                                             InvLinear))]


def layer_inputs(model, layers, x):
    """Input shape of every layer in one forward pass of the network."""
    shapes, hooks = {}, []

    def recorder(name):
        def hook(module, args):
            shapes.setdefault(name, tuple(args[0].shape))
        return hook
    for name, layer in layers:
        hooks.append(layer.register_forward_pre_hook(recorder(name)))
    with torch.no_grad():
        model.eval()
        model(x)
        model.train()
    for h in hooks:
        h.remove()
    return shapes


def _median_time(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _profile_shares(layer, x, grad):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x).backward(grad)
    totals = dict.fromkeys(("stats", "inv_sqrt", "fold", "conv"), 0.0)
    counted = set()
    events = prof.events()
    for ev in events:
        cat = CATEGORIES.get(ev.name)
        if cat is None:
            continue
        parent, nested = ev.cpu_parent, False
        while parent is not None:
            if CATEGORIES.get(parent.name) is not None:
                nested = True
                break
            parent = parent.cpu_parent
        if not nested and id(ev) not in counted:
            counted.add(id(ev))
            totals[cat] += ev.cpu_time_total
    whole = sum(ev.cpu_time_total for ev in events if ev.cpu_parent is None) or 1.0
    return {k: v / whole for k, v in totals.items()}


def layer_table(model, x, repeats=3):
    """Per invariance layer: input shape, d, forward / backward ms, shares of the fwd+bwd."""
    layers = invariance_layers(model)
    shapes = layer_inputs(model, layers, x)
    rows = []
    for name, layer in layers:
        layer = copy.deepcopy(layer).train()
        inp = torch.randn(shapes[name]).requires_grad_()
        with torch.no_grad():
            out_shape = layer(inp).shape
        grad = torch.randn(out_shape)
        fwd = _median_time(lambda: layer(inp), repeats)
        both = _median_time(lambda: layer(inp).backward(grad), repeats)
        shares = _profile_shares(layer, inp, grad)
        rows.append(dict(layer=name, input=list(shapes[name]), d=layer.running_mean.shape[-1],
                         groups=layer.running_mean.shape[0], n_iter=layer.n_iter,
                         forward_ms=1e3 * fwd, backward_ms=1e3 * max(both - fwd, 0.0),
                         **{f"share_{k}": v for k, v in shares.items()}))
    return rows


def format_table(rows):
    head = (f"{'layer':<22}{'input':>20}{'d':>6}{'fwd ms':>9}{'bwd ms':>9}"
            f"{'stats':>8}{'invsqrt':>9}{'conv':>7}{'fold':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = "x".join(str(s) for s in r["input"])
        lines.append(f"{r['layer']:<22}{shape:>20}{r['d']:>6}{r['forward_ms']:>9.1f}"
                     f"{r['backward_ms']:>9.1f}{100 * r['share_stats']:>7.0f}%"
                     f"{100 * r['share_inv_sqrt']:>8.0f}%{100 * r['share_conv']:>6.0f}%"
                     f"{100 * r['share_fold']:>6.0f}%")
    total_f = sum(r["forward_ms"] for r in rows)
    total_b = sum(r["backward_ms"] for r in rows)
    lines.append(f"{'total':<22}{'':>20}{'':>6}{total_f:>9.1f}{total_b:>9.1f}")
    return "\n".join(lines)


# ---- what no implementation of the method can avoid -------------------------------------

def _floor_layer(layer, shape, repeats):
    """Seconds of the dense products the method needs for one layer, run the way the ops
    run them (BLAS; the eigendecomposition under the d x d thread policy): the sampled second moment and its
    backward (X^T X on the lower block triangle, X A), the eigendecomposition, and the fold
    with its two backward products.  Normalisation, gather/scatter, the spectral products
    and every elementwise op are left out, so this is a lower bound on the layer's extra
    cost over a plain conv."""
    from toolkit.invariance import InvConv2d, ops
    from toolkit.invariance.modules import _small_math_threads
    x = torch.randn(shape)
    if isinstance(layer, InvConv2d):
        sample = tuple(layer.sampling_stride * s for s in layer.stride)
        X = ops.ops.sampled_patches(x, list(layer.kernel_size), list(layer.padding),
                                    list(layer.dilation), list(sample), layer.groups,
                                    layer.block)
    else:
        X = x.reshape(1, -1, layer.block)
    groups, d = X.shape[0], X.shape[-1]
    mean, second = ops.ops.patch_moments(X)
    sigma = second + 1e-3 * torch.eye(d)
    A = torch.randn(groups, d, d)
    cols = layer.weight.detach().reshape(groups, d, -1)  # the fold's (d, out*G) operand
    g_cols = torch.randn_like(cols)

    def eigh():
        with _small_math_threads(x.device):
            torch.linalg.eigh(sigma)
    parts = {
        "moments": lambda: ops.ops.patch_moments(X),
        "moments_backward": lambda: torch.bmm(X, A),
        "eigh": eigh,
        "fold": lambda: (torch.bmm(sigma, cols), torch.bmm(sigma.mT, g_cols),
                         torch.bmm(g_cols, cols.mT)),
    }
    for fn in parts.values():
        fn()  # warm-up
    return {name: _median_time(fn, repeats) for name, fn in parts.items()}


def _bn_seconds(shape, repeats):
    """BatchNorm2d forward + backward on a conv output shape: what the inv model drops."""
    bn = torch.nn.BatchNorm2d(shape[1]).train()
    x = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    bn(x).backward(g)
    return _median_time(lambda: bn(x).backward(g), repeats)


def floor_estimate(model, x, bn_step_s, repeats=3):
    """Lower bound on the inv model's step from the measured BN step:
    bn_step - (BatchNorm layers' fwd+bwd) + (each invariance layer's unavoidable products).
    Returns (per-layer rows, floor step seconds)."""
    from toolkit.invariance import InvConv2d
    layers = invariance_layers(model)
    shapes = layer_inputs(model, layers, x)
    rows, extra, dropped = [], 0.0, 0.0
    for name, layer in layers:
        parts = _floor_layer(layer, shapes[name], repeats)
        extra += sum(parts.values())
        if isinstance(layer, InvConv2d):  # its BN twin sits on the conv output
            with torch.no_grad():
                out_shape = F.conv2d(torch.zeros(shapes[name]), layer.weight, None,
                                     layer.stride, layer.padding, layer.dilation,
                                     layer.groups).shape
            dropped += _bn_seconds(tuple(out_shape), repeats)
        rows.append(dict(layer=name, **{f"{k}_ms": 1e3 * v for k, v in parts.items()}))
    return rows, bn_step_s - dropped + extra
