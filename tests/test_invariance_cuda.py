"""CUDA side of the invariance layer.  Every .cu holds only kernels and plain launchers
(cuda/launchers.h) and includes nothing from ATen/c10/torch, so it compiles with bare nvcc here
(no torch include paths: the CPU wheel lacks c10/cuda's generated headers); the tensor glue
(cuda/glue_*.cpp) is built only for CUDA torch.  On a GPU machine (`pytest -m cuda`) the CUDA
kernels equal the CPU ones."""
import os
import re
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
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
FORBIDDEN = ("ATen/", "c10/", "torch/")


def nvcc_arch():
    """The oldest architecture of TORCH_CUDA_ARCH_LIST (setup.py) that this nvcc supports."""
    listed = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True).stdout
    for arch in ("70", "75", "80", "90"):
        if f"compute_{arch}" in listed:
            return arch
    pytest.skip(f"{NVCC} supports none of sm_70/75/80/90: {listed.split()}")


def own_includes(path, seen=None):
    """{file: [includes]} for path and every header of ours it reaches (quoted includes,
    resolved next to the including file, then in toolkit/csrc, like `nvcc -I toolkit/csrc`)."""
    seen = {} if seen is None else seen
    with open(path) as f:
        found = [(kind, name) for kind, name in INCLUDE.findall(f.read())]
    seen[path] = [name for _, name in found]
    for kind, name in found:
        if kind != '"':
            continue
        for base in (os.path.dirname(path), CSRC):
            candidate = os.path.normpath(os.path.join(base, name))
            if os.path.exists(candidate):
                if candidate not in seen:
                    own_includes(candidate, seen)
                break
    return seen


@pytest.mark.parametrize("name", CU_FILES)
def test_cu_file_includes_no_torch_headers(name):
    """A .cu (or any header of ours it includes) that pulls in ATen/c10/torch cannot be built
    by bare nvcc on this machine: tensor code belongs in the cuda/glue_*.cpp files."""
    reached = own_includes(os.path.join(CSRC, "cuda", name))
    bad = {os.path.relpath(f, CSRC): inc for f, incs in reached.items() for inc in incs
           if inc.startswith(FORBIDDEN)}
    assert not bad, f"{name} reaches torch headers: {bad}"
    assert os.path.join(CSRC, "cuda", "launchers.h") in reached, \
        f"{name} must define its launchers against cuda/launchers.h"


@pytest.fixture(scope="module")
def nvcc_results(tmp_path_factory):
    """Bare nvcc on every .cu (in parallel), only -I toolkit/csrc -> {name: (rc, log, obj)}."""
    arch = nvcc_arch()
    out_dir = tmp_path_factory.mktemp("nvcc")
    procs = {}
    for name in CU_FILES:
        obj = out_dir / (name + ".o")
        cmd = [NVCC, "-c", "-std=c++17", "-O0", f"-arch=sm_{arch}", f"-I{CSRC}",
               os.path.join(CSRC, "cuda", name), "-o", str(obj)]
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


def launcher_names():
    with open(os.path.join(CSRC, "cuda", "launchers.h")) as f:
        return re.findall(r"^cudaError_t (\w+)\(", f.read(), re.M)


@pytest.mark.skipif(NVCC is None or shutil.which("nm") is None, reason="nvcc or nm not found")
def test_every_launcher_is_instantiated_for_float_and_double(nvcc_results):
    """The glue (host C++) links against the launchers' explicit instantiations in the .cu
    objects; a missing one would only show up as an undefined symbol on a CUDA build."""
    objs = [str(obj) for rc, _, obj in nvcc_results.values() if rc == 0]
    symbols = subprocess.run(["nm", "-C", "--defined-only"] + objs, capture_output=True,
                             text=True).stdout
    names = launcher_names()
    assert len(names) == 8, names
    for name in names:
        for t in ("float", "double"):
            assert f"invariance::cuda::launch::{name}<{t}>(" in symbols, (name, t)


def test_every_cuda_kernel_file_is_registered():
    """The .cu kernels are wired in: register_cuda.cpp names each CUDA entry point and a
    cuda/glue_*.cpp defines it."""
    with open(os.path.join(CSRC, "cuda", "register_cuda.cpp")) as f:
        registered = f.read()
    with open(os.path.join(CSRC, "invariance.h")) as f:
        header = f.read()
    # cuda:: declares the backend kernel list (backend_kernels.inc), as cpu:: does
    cuda_part = header[header.index("namespace cuda {"):]
    assert '#include "backend_kernels.inc"' in cuda_part
    with open(os.path.join(CSRC, "backend_kernels.inc")) as f:
        cuda_part = f.read()
    glue = glue_sources()
    for fn in ("sample_norm_forward", "sample_norm_backward", "sampled_patches",
               "sampled_patches_backward", "local_stats_forward", "local_stats_backward",
               "ns_scalar_map", "ns_divided_differences"):
        assert f"invariance::cuda::{fn})" in registered and f" {fn}(" in cuda_part
        assert re.search(rf"^\S.* {fn}\(", glue, re.M), f"no glue defines cuda::{fn}"


def glue_sources():
    text = ""
    for name in sorted(os.listdir(os.path.join(CSRC, "cuda"))):
        if name.startswith("glue_") and name.endswith(".cpp"):
            with open(os.path.join(CSRC, "cuda", name)) as f:
                text += f.read()
    return text


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
