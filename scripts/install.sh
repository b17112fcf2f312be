#!/usr/bin/env bash
# Installs everything the toolkit needs on a fresh Debian 12 machine, idempotently.
# Each step leaves a stamp in .venv/.stamps named after the versions it installed,
# so a second run skips finished steps and a version bump redoes just that step.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
HOROVOD_VERSION=0.28.1
MPI4PY_VERSION=4.1.2
PY=${PYTHON:-python3}
VENV=.venv
STAMPS=$VENV/.stamps

say() { echo "[install] $*"; }
done_already() { [ -f "$STAMPS/$1" ]; }
stamp() { mkdir -p "$STAMPS"; touch "$STAMPS/$1"; }

# 1. System MPI: mpicc for mpi4py, libmpi for Horovod, mpirun. An MPI already on PATH (a
#    cluster's module) is used as it is; otherwise Open MPI comes from Debian's packages.
if command -v mpicc >/dev/null && command -v mpirun >/dev/null; then
    say "MPI: $(command -v mpirun)"
elif ! command -v apt-get >/dev/null; then
    echo "[install] error: no MPI on PATH (mpicc, mpirun) and no apt-get to install Open MPI: load your cluster's MPI module or install Open MPI, then run this again" >&2
    exit 2
elif ! dpkg -s openmpi-bin libopenmpi-dev >/dev/null 2>&1; then
    say "apt: openmpi-bin libopenmpi-dev"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
fi

# 1b. Fashion-MNIST for --dataset fashion_mnist: Debian's dataset-fashion-mnist (four IDX
#     files, 30 MB). Optional, so a machine without apt-get (or without root) only gets a
#     note: such a run says how to get the files, and the other data sets work as before.
if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    :
elif ! command -v apt-get >/dev/null; then
    say "note: no apt-get, so no Fashion-MNIST: --dataset fashion_mnist needs --data-dir DIR with its four IDX files"
else
    say "apt: dataset-fashion-mnist"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; then
        say "note: apt-get could not install dataset-fashion-mnist; --dataset fashion_mnist needs it (or --data-dir DIR)"
    fi
fi

# 2. Virtual environment with the CPU torch wheel. torch is installed first and alone,
#    pinned exactly, so that no later requirement can resolve to a CUDA build.
if [ ! -x $VENV/bin/python ]; then
    say "venv $VENV"
    $PY -m venv $VENV
fi
# The machine's pip config lists local indexes that lack some projects; pip warns about each.
pip_quiet() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
PIP=pip_quiet
cpu_torch_guard() {
    $VENV/bin/python -c "import torch,sys; sys.exit('error: a CUDA build of torch is installed; expected the CPU wheel' if torch.version.cuda else 0)"
}
CONSTRAINTS=$VENV/constraints.txt
echo "torch==$TORCH_VERSION" > $CONSTRAINTS
if ! done_already "torch-$TORCH_VERSION"; then
    say "torch==$TORCH_VERSION (CPU wheel)"
    $PIP install "torch==$TORCH_VERSION"
    cpu_torch_guard  # before the stamp: a CUDA wheel must not count as installed
    stamp "torch-$TORCH_VERSION"
fi

# 3. Python dependencies (runtime, tests, Horovod's build requirements). CMake stays below 4:
#    CMake 4 refuses the cmake_minimum_required(< 3.5) of Horovod's bundled Gloo.
DEPS="numpy tqdm scikit-learn pillow matplotlib tensorboard pytest packaging cloudpickle psutil pyyaml cmake>=3.18,<4 setuptools wheel ninja cython"
DEPS_KEY=$(echo "$DEPS" | md5sum | cut -c1-8)
if ! done_already "deps-$DEPS_KEY"; then
    say "python deps: $DEPS"
    $PIP install -c $CONSTRAINTS $DEPS
    stamp "deps-$DEPS_KEY"
fi
cpu_torch_guard

# 4. mpi4py from source against the system mpicc (a wheel would bring its own MPI).
if ! done_already "mpi4py-$MPI4PY_VERSION"; then
    say "mpi4py==$MPI4PY_VERSION from source against $(command -v mpicc)"
    MPICC=mpicc $PIP install --no-binary mpi4py --no-build-isolation -c $CONSTRAINTS "mpi4py==$MPI4PY_VERSION"
    stamp "mpi4py-$MPI4PY_VERSION"
fi

# 5. Horovod from its sdist, patched to C++17 (torch >= 2.1 headers need it).
if ! done_already "horovod-$HOROVOD_VERSION-torch-$TORCH_VERSION"; then
    say "horovod==$HOROVOD_VERSION from sdist (patched to C++17; takes ~5 min on 2 cores)"
    BUILD=$(mktemp -d)
    $PIP download --no-binary :all: --no-deps -d "$BUILD" "horovod==$HOROVOD_VERSION"
    tar -xzf "$BUILD/horovod-$HOROVOD_VERSION.tar.gz" -C "$BUILD"
    $VENV/bin/python scripts/patch_horovod.py "$BUILD/horovod-$HOROVOD_VERSION"
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
    HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 \
    MAKEFLAGS="-j$(nproc)" CMAKE_POLICY_VERSION_MINIMUM=3.5 \
        $PIP install --no-build-isolation --no-cache-dir -c $CONSTRAINTS "$BUILD/horovod-$HOROVOD_VERSION"
    rm -rf "$BUILD"
    stamp "horovod-$HOROVOD_VERSION-torch-$TORCH_VERSION"
fi

# 6. The project itself (builds the C++ extension toolkit._C). Rebuilt when sources change.
SRC_KEY=$(cat setup.py $(find toolkit/csrc -type f 2>/dev/null | sort) 2>/dev/null | md5sum | cut -c1-12)
if ! done_already "project-$SRC_KEY"; then
    say "pip install -e . (building toolkit._C)"
    rm -f $STAMPS/project-*
    MAX_JOBS=$(nproc) $PIP install --no-build-isolation --no-deps -e .
    stamp "project-$SRC_KEY"
fi
say "ready: $($VENV/bin/python -c 'import torch, horovod, mpi4py; print("torch", torch.__version__, "horovod", horovod.__version__, "mpi4py", mpi4py.__version__)')"
