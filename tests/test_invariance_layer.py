"""InvConv2d / InvLinear against the pure-PyTorch reference written from the spec."""
import copy

import pytest
import torch

from tests.invariance_reference import RefInvConv2d, RefInvLinear
from toolkit.invariance import InvConv2d, InvLinear

# float64: the whole computation is far from float64's rounding (u = 1.1e-16 times any
# condition number these small, well-scaled layers have), so 1e-5 can only fail on a wrong
# result. float32: see compare().
TOL64 = 1e-5

CONV_CASES = {
    # name: (C_in, C_out, H, W, N, layer kwargs)
    "k1": (8, 6, 8, 8, 3, dict(kernel_size=1)),
    "k1_stride2": (8, 6, 9, 9, 3, dict(kernel_size=1, stride=2)),
    "k3_pad": (8, 6, 9, 9, 3, dict(kernel_size=3, padding=1)),
    "k3_stride2": (8, 6, 11, 9, 3, dict(kernel_size=3, stride=2, padding=1)),
    "k7": (4, 5, 13, 12, 2, dict(kernel_size=7, padding=3)),
    "k3_dilation2": (6, 4, 11, 11, 2, dict(kernel_size=3, padding=2, dilation=2)),
    "c_not_multiple_of_block": (12, 6, 7, 7, 3, dict(kernel_size=3, padding=1, block=8)),
    "c_below_block": (3, 6, 9, 9, 3, dict(kernel_size=3, padding=1, block=64)),
    "several_blocks": (8, 6, 9, 9, 3, dict(kernel_size=3, padding=1, block=2)),
    "groups2": (8, 6, 9, 9, 3, dict(kernel_size=3, padding=1, groups=2)),
    "batch1_odd": (6, 4, 7, 5, 1, dict(kernel_size=3, padding=1)),
    "sampling1_norm_none": (4, 4, 6, 6, 2, dict(kernel_size=3, padding=1, sampling_stride=1,
                                                 norm="none")),
    "local": (6, 4, 9, 9, 2, dict(kernel_size=3, padding=1, norm="local")),
    "local_stride2": (6, 4, 10, 10, 2, dict(kernel_size=3, stride=2, padding=1, norm="local")),
}


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def results(layer, x, g=None):
    """Output, input/weight/bias gradients and running buffers of one forward/backward."""
    xr = x.clone().requires_grad_()
    y = layer(xr)
    g = torch.randn_like(y) if g is None else g.to(y.dtype)
    y.backward(g)
    return [y, xr.grad, layer.weight.grad, layer.bias.grad, layer.running_whitening,
            layer.running_mean], g


def compare(layer, ref, x, dtype):
    """In float64 the layer equals the reference within TOL64. In float32 both the layer and
    the reference are held against the reference in float64 on the same (fp32-rounded)
    inputs and weights: the layer may be at most 4x further from it than the reference's own
    float32 rounding, plus d*u (u = fp32's unit roundoff, d the longest reduction of a
    patch), so the bound follows the arithmetic of whatever CPU runs it."""
    exact = copy.deepcopy(ref).double() if dtype == torch.float32 else None
    got, g = results(layer, x)
    want, _ = results(ref, x, g)
    if exact is None:
        for a, b in zip(got, want):
            assert rel_err(a, b) < TOL64
        return
    truth, _ = results(exact, x.double(), g.double())
    u = torch.finfo(torch.float32).eps / 2
    floor = ref.weight[0].numel() * u
    for name, a, b, t in zip(("y", "dx", "dw", "db", "whitening", "mean"), got, want, truth):
        assert rel_err(a.double(), t) <= 4 * rel_err(b.double(), t) + floor, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("method", ["spectral", "newton"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_matches_reference(case, method, dtype):
    cin, cout, h, w, n, kwargs = CONV_CASES[case]
    torch.manual_seed(0)
    layer = InvConv2d(cin, cout, n_iter=5, method=method, **kwargs).to(dtype)
    ref = RefInvConv2d.like(layer)
    x = torch.randn(n, cin, h, w, dtype=dtype) * 3 + 1
    compare(layer, ref, x, dtype)
    layer.eval()
    ref.eval()
    layer.zero_grad()
    ref.zero_grad()
    compare(layer, ref, x, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape,block", [((5, 12), None), ((3, 4, 12), 8), ((2, 3, 10), 4)])
def test_linear_matches_reference(shape, block, dtype):
    torch.manual_seed(1)
    layer = InvLinear(shape[-1], 7, block=block).to(dtype)
    ref = RefInvLinear.like(layer)
    x = torch.randn(*shape, dtype=dtype) * 2 - 1
    compare(layer, ref, x, dtype)


def test_layer_gradcheck_float64():
    torch.manual_seed(2)
    for method in ("spectral", "newton"):
        layer = InvConv2d(4, 3, 3, padding=1, block=2, method=method).double()
        x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)

        def f(inp, weight, bias):
            layer.weight.data, layer.bias.data = weight.detach(), bias.detach()
            return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (inp,))
        w = layer.weight.detach().clone().requires_grad_()
        b = layer.bias.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(f, (x, w, b), atol=1e-6, rtol=1e-4, fast_mode=True)
    lin = InvLinear(6, 3, block=3).double()
    xl = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lin, (xl,), fast_mode=True)


def test_per_sample_scale_and_shift_invariance():
    torch.manual_seed(3)
    layer = InvConv2d(6, 4, 3, padding=1).double()
    x = torch.randn(4, 6, 8, 8, dtype=torch.float64)
    a = torch.tensor([0.5, 2.0, 7.0, 1.3], dtype=torch.float64).view(-1, 1, 1, 1)
    b = torch.tensor([-3.0, 0.1, 5.0, 10.0], dtype=torch.float64).view(-1, 1, 1, 1)
    y1 = layer(x)
    y2 = layer(a * x + b)
    assert rel_err(y2, y1) < 1e-4
    lin = InvLinear(10, 3).double()
    xl = torch.randn(5, 10, dtype=torch.float64)
    assert rel_err(lin(xl * 4 + 2), lin(xl)) < 1e-4


def test_whitened_patches_have_identity_covariance():
    from tests.invariance_reference import conv_vectors
    torch.manual_seed(4)
    for method in ("spectral", "newton"):
        layer = InvConv2d(4, 4, 3, padding=1, n_iter=40, method=method).double()
        x = torch.randn(8, 4, 16, 16, dtype=torch.float64)
        layer(x)
        whiten = layer.running_whitening[0] / layer.momentum  # first update from identity...
        whiten = (layer.running_whitening[0] - (1 - layer.momentum) * torch.eye(36,
                  dtype=torch.float64)) / layer.momentum
        xhat = torch.ops.invariance.sample_norm(x, 3, layer.eps)
        v = conv_vectors(xhat, (3, 3), (1, 1), (1, 1), (3, 3), 1, 4)[0]
        cov = torch.cov(v.t(), correction=0) + layer.eps * torch.eye(36, dtype=torch.float64)
        white = whiten @ cov @ whiten.t()
        assert (white - torch.eye(36, dtype=torch.float64)).abs().max() < 1e-6


def test_bf16_autocast_keeps_statistics_in_fp32():
    torch.manual_seed(5)
    layer = InvConv2d(8, 8, 3, padding=1)
    twin = InvConv2d(8, 8, 3, padding=1)
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert layer.running_whitening.dtype == torch.float32
    twin(x.float())  # the same statistics computed from the bf16 values in fp32
    assert torch.allclose(layer.running_whitening, twin.running_whitening, atol=1e-6)
    assert torch.allclose(layer.running_mean, twin.running_mean, atol=1e-6)
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()
