"""The layer's numeric tests hold whatever arithmetic path the CPU takes.

Results in floating point depend on the thread count (how reductions are split), on which
MKL code path runs the products (MKL_CBWR) and on which vector width ATen's kernels use
(ATEN_CPU_CAPABILITY). A tolerance tuned on one machine can fail on the next, so the
numeric tests derive their bounds from the arithmetic; this file runs them again under
each of those factors, one at a time, in a fresh process (the factors are read at start).
"""
import os
import subprocess
import sys

import pytest

from tests.mpi_util import REPO

# The tests whose tolerances depend on float32 rounding (products, reductions, eigh);
# everything else compares float64 results or exact integer indexing.
NUMERIC = ["tests/test_invariance_ops.py", "tests/test_invariance_layer.py", "-k",
           "fp32 or f32 or moments"]
VARIANTS = {
    "threads-1": {"OMP_NUM_THREADS": "1"},
    "threads-2": {"OMP_NUM_THREADS": "2"},
    "threads-4": {"OMP_NUM_THREADS": "4"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "mkl-avx2": {"MKL_CBWR": "AVX2"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_numeric_tests_hold_under(variant):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_CBWR",
                                                             "ATEN_CPU_CAPABILITY")}
    env.update(VARIANTS[variant])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *NUMERIC], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
