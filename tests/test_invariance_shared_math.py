"""The per-element math shared by the CPU and CUDA kernels (the ATen-free TK_HD headers in
toolkit/csrc) equals the CPU ops.  tests/shared_math_host.cu replays the CUDA kernels' loops
with those headers on the host; it is built by bare nvcc, so what is checked is the
__host__ __device__ code the GPU kernels are compiled from, and no GPU is needed."""
import os
import shutil
import subprocess

import pytest
import torch

import toolkit.invariance.ops  # noqa: F401  (loads toolkit._C: torch.ops.invariance)

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "toolkit", "csrc")
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc"
                                if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
ops = torch.ops.invariance

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    exe = tmp_path_factory.mktemp("shared_math") / "shared_math_host"
    proc = subprocess.run([NVCC, "-std=c++17", "-O2", f"-I{CSRC}",
                           os.path.join(HERE, "shared_math_host.cu"), "-o", str(exe)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def run(*args, inputs=()):
        text = "\n".join(repr(v) for t in inputs for v in t.flatten().tolist())
        out = subprocess.run([str(exe)] + [str(a) for a in args], input=text,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return torch.tensor([float(v) for v in out.stdout.split()], dtype=torch.float64)
    return run


@pytest.mark.parametrize("shape, kernel, padding, dilation, stride, groups, block", [
    ((2, 4, 7, 6), (3, 3), (1, 1), (1, 1), (3, 3), 1, 1),
    ((1, 6, 9, 8), (3, 3), (1, 1), (2, 1), (2, 3), 2, 3),
    ((2, 4, 5, 5), (1, 1), (0, 0), (1, 1), (2, 2), 1, 2),
    ((1, 2, 9, 9), (7, 7), (3, 3), (1, 1), (2, 2), 1, 1),
])
def test_patch_index_math_equals_cpu_gather(host, shape, kernel, padding, dilation, stride,
                                            groups, block):
    x = torch.arange(1, 1 + torch.Size(shape).numel(), dtype=torch.float64).reshape(shape)
    expected = ops.sampled_patches(x, kernel, padding, dilation, stride, groups, block)
    got = host("patches", *shape, *kernel, *padding, *dilation, *stride, groups, block)
    assert torch.equal(got, expected.flatten())


def test_sample_norm_math_equals_cpu(host):
    torch.manual_seed(0)
    rows, len_, eps = 5, 37, 1e-5
    x = torch.randn(rows, len_, dtype=torch.float64) * 3 + 1
    x[2] = 0.25  # constant row: sigma == 0, the backward drops the std term
    g = torch.randn(rows, len_, dtype=torch.float64)
    y, sigma = ops.sample_norm_forward(x, 1, eps)
    gx = ops.sample_norm_backward(g, y, sigma, 1, eps)
    got = host("sample_norm", rows, len_, eps, inputs=(x, g))
    n = rows * len_
    torch.testing.assert_close(got[:n], y.flatten(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[n:n + rows], sigma.flatten(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[n + rows:], gx.flatten(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape, window", [((2, 3, 7, 6), 3), ((1, 2, 5, 9), 5), ((1, 1, 3, 3), 7)])
def test_local_stats_math_equals_cpu(host, shape, window):
    torch.manual_seed(1)
    rf_eps = 1e-3
    x = torch.randn(shape, dtype=torch.float64)
    N, _, H, W = shape
    gmean, gstd = torch.randn(2, N, 1, H, W, dtype=torch.float64)
    mean, std, var = ops.local_stats_forward(x, window, rf_eps)
    gx = ops.local_stats_backward(gmean, gstd, x, mean, var, window)
    got = host("local_stats", *shape, window, rf_eps, inputs=(x, gmean, gstd))
    p = N * H * W
    for k, ref in enumerate((mean, std, var)):
        torch.testing.assert_close(got[k * p:(k + 1) * p], ref.flatten(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[3 * p:], gx.flatten(), rtol=1e-9, atol=1e-10)


def test_newton_schulz_scalar_math_equals_cpu(host):
    torch.manual_seed(2)
    lam = torch.rand(3, 6, dtype=torch.float64) * 2
    lam[1, 3] = lam[1, 2]  # equal eigenvalues: the divided difference is a derivative
    norm = lam.norm(dim=1) * 1.1
    psi, dpsi = ops.ns_scalar_map(lam, norm, 5)
    dd = ops.ns_divided_differences(lam, norm, 5)
    got = host("ns", 3, 6, 5, inputs=(lam, norm))
    torch.testing.assert_close(got[:18], psi.flatten(), rtol=0, atol=0)
    torch.testing.assert_close(got[18:36], dpsi.flatten(), rtol=0, atol=0)
    torch.testing.assert_close(got[36:], dd.flatten(), rtol=0, atol=0)
