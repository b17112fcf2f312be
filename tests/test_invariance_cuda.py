"""CUDA side of the invariance layer: every .cu compiles with nvcc against torch's headers
(whenever nvcc exists), and on a GPU machine (`pytest -m cuda`) the CUDA kernels equal the
CPU ones."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from toolkit.invariance import InvConv2d, InvLinear

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toolkit",
                    "csrc")
CU_FILES = sorted(f for f in os.listdir(os.path.join(CSRC, "cuda")) if f.endswith(".cu"))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc"
                                if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def nvcc_arch():
    """The oldest architecture of TORCH_CUDA_ARCH_LIST (setup.py) that this nvcc supports."""
    listed = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True).stdout
    for arch in ("70", "75", "80", "90"):
        if f"compute_{arch}" in listed:
            return arch
    pytest.skip(f"{NVCC} supports none of sm_70/75/80/90: {listed.split()}")


@pytest.fixture(scope="module")
def include_dirs(tmp_path_factory):
    from torch.utils.cpp_extension import include_paths
    dirs = list(include_paths()) + [CSRC]
    # CPU wheels ship the c10/cuda headers but not their generated build-config header.
    generated = "c10/cuda/impl/cuda_cmake_macros.h"
    if not any(os.path.exists(os.path.join(d, generated)) for d in dirs):
        shim = tmp_path_factory.mktemp("cuda_shim")
        os.makedirs(shim / "c10/cuda/impl")
        (shim / generated).write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        dirs.append(str(shim))
    return dirs


@pytest.fixture(scope="module")
def nvcc_results(include_dirs, tmp_path_factory):
    """Compiles every .cu file (in parallel: header parsing dominates) -> {name: (rc, log, obj)}."""
    arch = nvcc_arch()
    out_dir = tmp_path_factory.mktemp("nvcc")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    procs = {}
    for name in CU_FILES:
        obj = out_dir / (name + ".o")
        cmd = [NVCC, "-c", "-std=c++17", "-O0", f"-arch=sm_{arch}", "-diag-suppress", "3306",
               f"-D_GLIBCXX_USE_CXX11_ABI={abi}", os.path.join(CSRC, "cuda", name), "-o",
               str(obj)] + [f"-I{d}" for d in include_dirs]
        procs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True), obj)
    results = {}
    for name, (proc, obj) in procs.items():
        log, _ = proc.communicate(timeout=900)
        results[name] = (proc.returncode, log, obj)
    return results


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")
@pytest.mark.parametrize("name", CU_FILES)
def test_cu_file_compiles_with_nvcc(name, nvcc_results):
    rc, log, obj = nvcc_results[name]
    assert rc == 0, log[-3000:]
    assert obj.stat().st_size > 0


def test_every_cuda_kernel_file_is_registered():
    """The .cu kernels are wired in: register_cuda.cpp names each CUDA entry point."""
    with open(os.path.join(CSRC, "cuda", "register_cuda.cpp")) as f:
        registered = f.read()
    with open(os.path.join(CSRC, "invariance.h")) as f:
        header = f.read()
    cuda_part = header[header.index("namespace cuda {"):]
    for fn in ("sample_norm_forward", "sample_norm_backward", "sampled_patches",
               "sampled_patches_backward", "local_stats_forward", "local_stats_backward",
               "ns_scalar_map", "ns_divided_differences"):
        assert f"invariance::cuda::{fn})" in registered and f" {fn}(" in cuda_part


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=1, stride=2),
                                    dict(kernel_size=3, stride=2, padding=1, groups=2),
                                    dict(kernel_size=3, padding=1, norm="local"),
                                    dict(kernel_size=7, padding=3, block=4)])
@pytest.mark.parametrize("method", ["newton", "spectral"])
def test_cuda_layer_equals_cpu(kwargs, method):
    torch.manual_seed(0)
    cpu = InvConv2d(8, 6, method=method, **kwargs).double()
    gpu = InvConv2d(8, 6, method=method, **kwargs).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(3, 8, 11, 10, dtype=torch.float64)
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    yc, yg = cpu(xc), gpu(xg)
    assert torch.allclose(yg.cpu(), yc, rtol=1e-6, atol=1e-8)
    g = torch.randn_like(yc)
    yc.backward(g)
    yg.backward(g.cuda())
    assert torch.allclose(xg.grad.cpu(), xc.grad, rtol=1e-6, atol=1e-8)
    assert torch.allclose(gpu.weight.grad.cpu(), cpu.weight.grad, rtol=1e-6, atol=1e-8)
    assert torch.allclose(gpu.running_whitening.cpu(), cpu.running_whitening, rtol=1e-6,
                          atol=1e-9)


@pytest.mark.cuda
@needs_gpu
def test_cuda_ops_equal_cpu_and_pass_opcheck():
    from tests.test_invariance_ops import op_samples
    for op, args in op_samples():
        moved = [a.detach().cuda().requires_grad_(a.requires_grad)
                 if isinstance(a, torch.Tensor) else a for a in args]
        torch.library.opcheck(op, moved)
        out_c, out_g = op(*args), op(*moved)
        out_c = out_c if isinstance(out_c, tuple) else (out_c,)
        out_g = out_g if isinstance(out_g, tuple) else (out_g,)
        for a, b in zip(out_c, out_g):
            assert torch.allclose(b.cpu(), a, rtol=1e-6, atol=1e-8), op


@pytest.mark.cuda
@needs_gpu
def test_cuda_linear_and_bf16_autocast():
    lin = InvLinear(16, 4).cuda()
    x = torch.randn(2, 5, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16 and lin.running_whitening.dtype == torch.float32
    assert sys.modules["toolkit._C"].with_cuda
