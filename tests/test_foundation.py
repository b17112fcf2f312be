"""The installed stack: Open MPI under mpi4py, Horovod's build, the C++17 patch script."""
import os
import subprocess
import sys

import pytest

from tests.mpi_util import REPO

VENV_BIN = os.path.dirname(sys.executable)


def test_mpi4py_links_the_system_open_mpi():
    # In a child: importing mpi4py initialises MPI as a singleton, which leaves Open MPI/PMIx
    # variables in this process's environment that later mpirun jobs started from the test
    # process would inherit (mpirun inside another network namespace then failed).
    out = subprocess.run([sys.executable, "-c",
                          "from mpi4py import MPI; print(MPI.Get_library_version())"],
                         capture_output=True, text=True, check=True).stdout
    assert "Open MPI" in out


def test_horovod_build_has_pytorch_mpi_and_gloo():
    out = subprocess.run([os.path.join(VENV_BIN, "horovodrun"), "--check-build"],
                         capture_output=True, text=True, check=True).stdout
    for name in ("PyTorch", "MPI", "Gloo"):
        assert any(line.strip().startswith("[X]") and name in line
                   for line in out.splitlines()), f"{name} missing in:\n{out}"


def test_torch_is_the_cpu_build():
    import torch
    assert torch.__version__.startswith("2.13.0") and torch.version.cuda is None


def _patch(root):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "patch_horovod.py"),
                           str(root)], capture_output=True, text=True)


def test_patch_horovod_rewrites_both_cmake_files(tmp_path):
    (tmp_path / "horovod" / "torch").mkdir(parents=True)
    (tmp_path / "CMakeLists.txt").write_text("x\nset(CMAKE_CXX_STANDARD 14)\ny\n")
    (tmp_path / "horovod/torch/CMakeLists.txt").write_text(
        "if(A)\n    set(CMAKE_CXX_STANDARD 14)\nendif()\n")
    assert _patch(tmp_path).returncode == 0
    assert "set(CMAKE_CXX_STANDARD 17)" in (tmp_path / "CMakeLists.txt").read_text()
    assert "    set(CMAKE_CXX_STANDARD 17)" in \
        (tmp_path / "horovod/torch/CMakeLists.txt").read_text()
    assert _patch(tmp_path).returncode == 0  # idempotent


def test_patch_horovod_fails_loudly_when_the_text_is_absent(tmp_path):
    (tmp_path / "horovod" / "torch").mkdir(parents=True)
    (tmp_path / "CMakeLists.txt").write_text("set(CMAKE_CXX_STANDARD 11)\n")
    (tmp_path / "horovod/torch/CMakeLists.txt").write_text("nothing\n")
    proc = _patch(tmp_path)
    assert proc.returncode != 0
    assert "CMAKE_CXX_STANDARD 14" in proc.stderr
    assert (tmp_path / "CMakeLists.txt").read_text() == "set(CMAKE_CXX_STANDARD 11)\n"
