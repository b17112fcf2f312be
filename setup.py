"""Builds the toolkit and its C++/CUDA extension toolkit._C.

CPU torch: a CppExtension from toolkit/csrc/*.cpp and toolkit/csrc/cpu/*.cpp, compiled and
linked with -fopenmp. CUDA torch with nvcc available: a CUDAExtension that adds the .cu kernels
in toolkit/csrc/cuda/ and their tensor glue (toolkit/csrc/cuda/*.cpp).
"""
import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("toolkit", "csrc")


def sources(*patterns):
    found = []
    for pattern in patterns:
        found += sorted(glob.glob(os.path.join(CSRC, pattern)))
    return found


def default_arch_list():
    """Volta, Ampere, Hopper; CUDA 13 dropped sm_70, so there Turing (7.5) is the oldest."""
    import re
    import subprocess
    try:
        out = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True).stdout
        major = int(re.search(r"release (\d+)", out).group(1))
    except (OSError, AttributeError, TypeError, ValueError):
        major = 12
    return "7.5;8.0;9.0" if major >= 13 else "7.0;8.0;9.0"


def check_cuda_home():
    """torch takes CUDA_HOME from the environment, else as the grandparent of the `nvcc` on
    PATH; when that nvcc is a wrapper script (/usr/local/bin/nvcc exec'ing the real one) the
    guess is /usr/local, and the build fails much later on a missing cuda_runtime.h."""
    header = os.path.join(CUDA_HOME, "include", "cuda_runtime_api.h")
    if not os.path.isfile(header):
        raise SystemExit(f"error: CUDA_HOME={CUDA_HOME} has no include/cuda_runtime_api.h; "
                         "set CUDA_HOME to the CUDA toolkit root (the directory with bin/nvcc "
                         "and include/), or TOOLKIT_NO_CUDA=1 for the CPU build")


def extension():
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None \
        and os.environ.get("TOOLKIT_NO_CUDA", "0") != "1"
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-DAT_PARALLEL_OPENMP=1"]
    common = dict(
        name="toolkit._C",
        include_dirs=[os.path.join(HERE, CSRC)],
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        check_cuda_home()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", default_arch_list())
        # No -std here: BuildExtension then passes torch's own standard to g++ and nvcc alike
        # (C++20 for torch 2.13, whose c10 headers use C++20 bit-field initialisers).
        cuda_cxx = [flag for flag in cxx if not flag.startswith("-std=")]
        return CUDAExtension(
            sources=sources("*.cpp", "cpu/*.cpp", "cuda/*.cpp", "cuda/*.cu"),
            extra_compile_args={"cxx": cuda_cxx + ["-DWITH_CUDA"], "nvcc": ["-O3"]},
            **common)
    return CppExtension(sources=sources("*.cpp", "cpu/*.cpp"),
                        extra_compile_args={"cxx": cxx}, **common)


setup(
    name="hpc-invariance-toolkit",
    version="0.1.0",
    description="Distributed training on MPI/SLURM with the invariance layer and DaSGD",
    # experiments/ (benchmarks, studies, emulated cluster) and tests/ stay in the checkout.
    packages=find_packages(include=["toolkit", "toolkit.*", "launch", "launch.*",
                                    "models", "models.*"]),
    package_data={"toolkit": ["csrc/*.h", "csrc/*/*.h", "openmpi_coll_rules.conf"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=["torch", "numpy", "tqdm", "scikit-learn"],
    extras_require={"plots": ["matplotlib"], "imagefolder": ["pillow"],
                    "tensorboard": ["tensorboard"]},
)
