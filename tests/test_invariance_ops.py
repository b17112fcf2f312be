"""The ops of toolkit._C one by one: opcheck, gradcheck, and the spectral path vs the loop."""
import pytest
import torch
import torch.nn.functional as F

from tests.invariance_reference import conv_vectors, local_stats, moments, newton_schulz
from toolkit.invariance import ops as inv

OPS = torch.ops.invariance
PATCH = ([3, 3], [1, 1], [1, 1], [2, 2], 1, 2)  # kernel, padding, dilation, stride, groups, block


def spd(batch, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, d, d, generator=g, dtype=dtype)
    return a @ a.mT / d + 0.1 * torch.eye(d, dtype=dtype)


def x4(seed=0, shape=(2, 4, 7, 6), grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


def op_samples():
    """(op, args) for every op of the library."""
    x = x4(grad=True)
    sigma = spd(2, 5).requires_grad_()
    lam = torch.linalg.eigvalsh(spd(2, 5))
    norm = torch.tensor([2.0, 3.0], dtype=torch.float64)
    patches = OPS.sampled_patches(x.detach(), *PATCH)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    d_conv = torch.randn(1, 18, 18, dtype=torch.float64, requires_grad=True)
    mu_conv = torch.randn(1, 18, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    folded = OPS.fold_weights(w.detach(), d_conv.detach(), mu_conv.detach(), b.detach(), 2 // 2,
                              True)[0]
    y, s = OPS.sample_norm_forward(x.detach(), 3, 1e-5)
    m, _, v = OPS.local_stats_forward(x.detach(), 5, 1.0)
    n_iter = 4
    _, trace = OPS.inv_sqrt_newton_forward(sigma.detach(), n_iter)
    _, q, lam_s = OPS.inv_sqrt_spectral_forward(sigma.detach(), n_iter)
    g3 = torch.randn(2, 5, 5, dtype=torch.float64)
    d = x.detach()
    return [
        (OPS.sample_norm, (x, 3, 1e-5)),
        (OPS.sample_norm_forward, (d, 3, 1e-5)),
        (OPS.sample_norm_backward, (torch.randn_like(y), y, s, 3, 1e-5)),
        (OPS.sampled_patches, (d, *PATCH)),
        (OPS.sampled_patches_backward, (torch.randn_like(patches), d, *PATCH)),
        (OPS.im2col_moments, (x, *PATCH)),
        (OPS.patch_moments, (patches,)),
        (OPS.patch_moments_backward, (torch.randn(1, 18, dtype=torch.float64),
                                      torch.randn(1, 18, 18, dtype=torch.float64), patches)),
        (OPS.chunk_moments, (torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True), 3)),
        (OPS.inv_sqrt_newton, (sigma, n_iter)),
        (OPS.inv_sqrt_newton_forward, (sigma.detach(), n_iter)),
        (OPS.inv_sqrt_newton_backward, (g3, sigma.detach(), trace, n_iter)),
        (OPS.inv_sqrt_spectral, (sigma, n_iter)),
        (OPS.inv_sqrt_spectral_forward, (sigma.detach(), n_iter)),
        (OPS.inv_sqrt_spectral_backward, (g3, sigma.detach(), q, lam_s, n_iter)),
        (OPS.ns_scalar_map, (lam, norm, n_iter)),
        (OPS.ns_divided_differences, (lam, norm, n_iter)),
        (OPS.fold_weights, (w, d_conv, mu_conv, b, 1, True)),
        (OPS.fold_weights_backward, (torch.randn_like(folded), torch.randn(6, dtype=torch.float64),
                                     w.detach(), d_conv.detach(), mu_conv.detach(), folded, 1,
                                     True, [True, True, True])),
        (OPS.local_stats, (x, 5, 1.0)),
        (OPS.local_stats_forward, (d, 5, 1.0)),
        (OPS.local_stats_backward, (torch.randn_like(m), torch.randn_like(m), d, m, v, 5)),
    ]


def test_every_op_is_covered():
    declared = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                if name.startswith("invariance::")}
    covered = {op._qualified_op_name.split("::")[-1] for op, _ in op_samples()}
    assert len(declared) == 22 and declared == covered


@pytest.mark.parametrize("index", range(22))
def test_opcheck(index):
    op, args = op_samples()[index]
    torch.library.opcheck(op, args)


def test_gradcheck_each_differentiable_op():
    x = x4(grad=True)
    assert torch.autograd.gradcheck(lambda t: OPS.sample_norm(t, 3, 1e-5), (x,))
    for patch in (PATCH, ([1, 1], [0, 0], [1, 1], [2, 3], 2, 1), ([3, 2], [2, 0], [2, 1],
                                                                   [1, 2], 2, 2)):
        assert torch.autograd.gradcheck(lambda t: OPS.im2col_moments(t, *patch), (x,))
    assert torch.autograd.gradcheck(lambda t: OPS.local_stats(t, 5, 1.0), (x,))
    sigma = spd(2, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: OPS.inv_sqrt_newton(s, 5), (sigma,))
    # eigh reads one triangle: check the spectral path on symmetric inputs
    assert torch.autograd.gradcheck(lambda s: OPS.inv_sqrt_spectral((s + s.mT) / 2, 5), (sigma,))
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    dd = torch.randn(2, 18, 18, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(2, 18, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: OPS.fold_weights(*a, 2, True), (w, dd, mu, b))
    wl = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    dl = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    ml = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    bl = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: OPS.fold_weights(*a, 1, False), (wl, dl, ml, bl))


def test_moments_equal_explicit_unfold():
    x = x4(shape=(3, 6, 9, 8)).float()
    for kernel, pad, dil, stride, groups, block in [((3, 3), (1, 1), (1, 1), (3, 3), 1, 2),
                                                   ((1, 1), (0, 0), (1, 1), (6, 6), 1, 3),
                                                   ((5, 5), (2, 2), (1, 1), (2, 2), 2, 3),
                                                   ((3, 3), (2, 2), (2, 2), (3, 3), 3, 2)]:
        mean, second = inv.im2col_moments(x, kernel, pad, dil, stride, groups, block)
        vectors = conv_vectors(x.double(), kernel, pad, dil, stride, groups, block)
        ref_mean, ref_second = moments(vectors)
        # A float32 sum of m terms is off by at most m u sum|term| (u: unit roundoff), so
        # an average by m u mean|term|, whatever order the kernel adds them in.
        gamma = vectors[0].shape[0] * torch.finfo(torch.float32).eps / 2
        abs_mean, abs_second = moments([v.abs() for v in vectors])
        assert ((mean.double() - ref_mean).abs() <= gamma * abs_mean).all()
        assert ((second.double() - ref_second).abs() <= gamma * abs_second).all()


def test_local_stats_equal_box_filter_reference():
    x = x4(shape=(2, 3, 9, 7))
    for window in (3, 7, 15):
        mean, std = OPS.local_stats(x, window, 1.0)
        ref_mean, ref_std = local_stats(x, window)
        assert torch.allclose(mean, ref_mean, atol=1e-12)
        assert torch.allclose(std, ref_std, atol=1e-12)


def near_equal_spectrum(dtype):
    lam = torch.tensor([1.0, 1.0 + 1e-7, 1.0 + 2e-7, 0.5, 0.5 + 1e-6, 0.05, 1e-3, 1e-4, 1e-4,
                        1e-5], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(7)))
    return ((q * lam) @ q.t()).unsqueeze(0).to(dtype)


def ns_sensitivity(sigma, n_iter, points=2000):
    """max |psi|, max |psi'| and max |psi''| / 2 of the scalar Newton-Schulz map over the
    span of the spectrum of `sigma` (float64), and ||sigma||_2. For a symmetric matrix a
    perturbation E moves psi(S) by at most max|psi'| ||E|| to first order (Daleckii-Krein:
    the Frechet derivative's entries are the divided differences psi[l_i, l_j], each equal to
    psi' somewhere between l_i and l_j), and the gradient psi'(S)*[G] by max|psi''|/2 ||E|| ||G||
    (second divided differences, likewise)."""
    lam = torch.linalg.eigvalsh(sigma)
    norm = sigma.square().sum().sqrt()
    grid = torch.logspace(float(lam.min().log10()), float(lam.max().log10()), points,
                          dtype=torch.float64)
    x = torch.cat([grid, lam]).requires_grad_()
    y, z = x / norm, torch.ones_like(x)
    for _ in range(n_iter):
        t = (3 - z * y) / 2
        y, z = y * t, z * t
    psi = z / norm.sqrt()
    d1, = torch.autograd.grad(psi.sum(), x, create_graph=True)
    d2, = torch.autograd.grad(d1.sum(), x)
    return (psi.abs().max().item(), d1.abs().max().item(), d2.abs().max().item() / 2,
            torch.linalg.matrix_norm(sigma, 2).item())


@pytest.mark.parametrize("n_iter", [5, 15])
def test_spectral_and_newton_loop_in_fp32_both_match_fp64(n_iter):
    """Both fp32 paths against the float64 loop on the same fp32-rounded matrix. Bound: the
    rounding of either path acts like a perturbation of S of at most d u ||S||_2 (u = fp32's
    unit roundoff; eigh's backward error, and each of the loop's products), plus d u max|psi|
    from forming the result; through the sensitivities above that gives
        |out - ref| <= d u (max|psi'| ||S|| + max|psi|),
    |grad - ref grad| <= d u (max|psi''|/2 ||S|| + max|psi'|) ||G||_F. No machine-tuned factor:
    the bound follows from d, u, the spectrum and the iteration count."""
    u = torch.finfo(torch.float32).eps / 2
    for sigma in (spd(3, 24, torch.float32, seed=3), near_equal_spectrum(torch.float32),
                  spd(1, 64, torch.float32, seed=4)):
        s64 = sigma.double().requires_grad_()
        ref = newton_schulz(s64, n_iter)
        g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(n_iter),
                        dtype=torch.float64)
        ref_grad, = torch.autograd.grad(ref, s64, g)
        outs, grads = [], []
        for op in (OPS.inv_sqrt_spectral, OPS.inv_sqrt_newton):
            a = sigma.clone().requires_grad_()
            out = op(a, n_iter)
            out.backward(g.float())
            outs.append(out.double())
            grads.append(a.grad.double())
        d = sigma.shape[-1]
        for i in range(sigma.shape[0]):
            psi_max, d1, d2, s_norm = ns_sensitivity(sigma[i].double(), n_iter)
            bound = d * u * (d1 * s_norm + psi_max)
            grad_bound = d * u * (d2 * s_norm + d1) * g[i].norm().item()
            for out, grad in zip(outs, grads):
                assert (out[i] - ref[i]).abs().max() <= bound
                assert (grad[i] - ref_grad[i]).abs().max() <= grad_bound
            assert bound < 0.1 * ref[i].abs().max()  # not vacuous, even for cond(S) = 1e5


def test_divided_differences_for_near_equal_eigenvalues():
    lam = torch.tensor([[0.3, 0.3, 0.3 + 1e-12, 0.7]], dtype=torch.float64)
    norm = torch.tensor([1.2], dtype=torch.float64)
    k = OPS.ns_divided_differences(lam, norm, 5)
    psi = lambda v: OPS.ns_scalar_map(v, norm, 5)[0]  # noqa: E731
    h = 1e-6
    deriv = (psi(lam + h) - psi(lam - h)) / (2 * h)
    assert torch.allclose(k[0].diagonal(), deriv[0], rtol=1e-6)
    assert torch.allclose(k[0, 0, 1], deriv[0, 0], rtol=1e-6)
    secant = (psi(lam)[0, 3] - psi(lam)[0, 0]) / (0.7 - 0.3)
    assert torch.allclose(k[0, 0, 3], secant, rtol=1e-9)


def test_ops_reject_bad_shapes():
    with pytest.raises(RuntimeError, match="block"):
        OPS.sampled_patches(x4(), [3, 3], [1, 1], [1, 1], [1, 1], 1, 3)
    with pytest.raises(RuntimeError, match="square"):
        OPS.inv_sqrt_newton(torch.randn(2, 3, 4), 5)
    with pytest.raises(RuntimeError, match="smaller than the dilated kernel"):
        OPS.sampled_patches(x4(shape=(1, 2, 2, 2)), [5, 5], [0, 0], [1, 1], [1, 1], 1, 1)
    assert F is not None


@pytest.mark.parametrize("interleaved", [True, False], ids=["conv", "linear"])
def test_fold_backward_computes_only_the_masked_gradients(interleaved):
    g = torch.Generator().manual_seed(8)
    shape, d = ((6, 4, 3, 3), 18) if interleaved else ((3, 8), 4)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    dd = torch.randn(1, d, d, generator=g, dtype=torch.float64)
    mu = torch.randn(1, d, generator=g, dtype=torch.float64)
    b = torch.randn(shape[0], generator=g, dtype=torch.float64)
    folded = OPS.fold_weights(w, dd, mu, b, 1, interleaved)[0]
    grads = (torch.randn_like(folded), torch.randn_like(b))
    args = (*grads, w, dd, mu, folded, 1, interleaved)
    full = OPS.fold_weights_backward(*args, [True, True, True])
    weight_only = OPS.fold_weights_backward(*args, [True, False, False])
    assert torch.equal(weight_only[0], full[0]) and torch.equal(weight_only[3], full[3])
    assert weight_only[1] is None and weight_only[2] is None
    torch.library.opcheck(OPS.fold_weights_backward, (*args, [True, False, False]))


def _divided_difference(li, lj, c, n_iter):
    """psi[lam_i, lam_j] of the scalar Newton-Schulz map, one pair at a time in Python
    floats (IEEE doubles, the same operations in the same order as the kernel)."""
    yi, yj, zi, zj, dy, dz = li / c, lj / c, 1.0, 1.0, 1.0 / c, 0.0
    for _ in range(n_iter):
        ti, tj = 0.5 * (3.0 - zi * yi), 0.5 * (3.0 - zj * yj)
        dt = -0.5 * (dz * yj + zi * dy)
        dy, dz = dy * tj + yi * dt, dt * zj + ti * dz
        yi, yj, zi, zj = yi * ti, yj * tj, zi * ti, zj * tj
    return dz / c ** 0.5


@pytest.mark.parametrize("b,d,n_iter", [(2, 7, 5), (1, 1, 3), (3, 10, 15)])
def test_divided_differences_equal_the_pairwise_formula_bit_for_bit(b, d, n_iter):
    g = torch.Generator().manual_seed(9)
    lam = torch.rand(b, d, generator=g, dtype=torch.float64) * 2
    lam[0, -1] = lam[0, 0]
    norm = lam.norm(dim=1) * 1.1
    got = OPS.ns_divided_differences(lam, norm, n_iter)
    for i in range(b):
        for p in range(d):
            for q in range(d):
                lo, hi = min(p, q), max(p, q)
                assert got[i, p, q].item() == _divided_difference(
                    lam[i, lo].item(), lam[i, hi].item(), norm[i].item(), n_iter)
