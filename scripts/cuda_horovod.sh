#!/usr/bin/env bash
# Builds Horovod with GPU operations on NCCL (HOROVOD_GPU_OPERATIONS=NCCL) into the CUDA virtual
# environment of scripts/cuda_build.sh: against its CUDA torch and the registry's NCCL
# (nvidia-nccl-cu13, already there as a dependency of torch), from the sdist patched to C++17
# like the CPU stack's. Ends with `horovodrun --check-build`, which must list NCCL.
#
#   bash scripts/cuda_horovod.sh          (after scripts/cuda_build.sh; ~10 min on 2 cores)
#
# Environment: HOROVOD_VERSION (0.28.1), HOROVOD_BUILD_CUDA_CC_LIST (80,90: Horovod's own
# kernels; the highest also as PTX), CUDA_HOME (asked from nvcc), HOROVOD_BUILD_LOG (where the
# pip/CMake log goes; default $CUDA_TREE/horovod-build.log).
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=cuda-horovod
# shellcheck source=scripts/cuda_common.sh
. scripts/cuda_common.sh
HOROVOD_VERSION=${HOROVOD_VERSION:-0.28.1}
CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-80,90}
LOG=${HOROVOD_BUILD_LOG:-$TREE/horovod-build.log}

[ -x "$PY" ] || fail "$VENV does not exist: run scripts/cuda_build.sh first"
"$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" \
    || fail "$VENV has no CUDA build of torch: run scripts/cuda_build.sh first"
CUDA_HOME=$(cuda_home)
export CUDA_HOME

# NCCL from the wheel: headers in nvidia/nccl/include, only libnccl.so.2 in lib. CMake's
# find_library looks for libnccl.so, so a private directory gets that name as a link.
nccl_dirs() {
    local nccl
    nccl=$(venv_package_dir nvidia/nccl)
    if [ -z "$nccl" ] || [ ! -f "$nccl/include/nccl.h" ]; then
        fail "no NCCL in $VENV (nvidia/nccl): install the nvidia-nccl-cu13 package"
    fi
    NCCL_INCLUDE=$nccl/include
    NCCL_LINK_DIR=$TREE/nccl-link
    mkdir -p "$NCCL_LINK_DIR"
    ln -sf "$nccl/lib/libnccl.so.2" "$NCCL_LINK_DIR/libnccl.so"
    say "NCCL $(sed -n 's/^#define NCCL_\(MAJOR\|MINOR\|PATCH\) *\([0-9]*\).*/\2/p' "$NCCL_INCLUDE/nccl.h" | paste -sd. -) from $nccl"
}

build_horovod() {
    local key="horovod-$HOROVOD_VERSION-nccl-torch-$TORCH_VERSION"
    if done_already "$key"; then say "$key already built"; return; fi
    registry_pip install "torch==$TORCH_VERSION" "cmake>=3.18,<4" cloudpickle psutil pyyaml packaging cffi
    local src
    src=$(mktemp -d)
    registry_pip download --no-binary :all: --no-deps -d "$src" "horovod==$HOROVOD_VERSION"
    tar -xzf "$src/horovod-$HOROVOD_VERSION.tar.gz" -C "$src"
    "$PY" scripts/patch_horovod.py "$src/horovod-$HOROVOD_VERSION"
    mkdir -p "$(dirname "$LOG")"
    say "building horovod==$HOROVOD_VERSION with HOROVOD_GPU_OPERATIONS=NCCL (CC $CC_LIST); log: $LOG"
    local start=$SECONDS
    if ! PATH="$VENV/bin:$CUDA_HOME/bin:$PATH" \
        HOROVOD_CUDA_HOME="$CUDA_HOME" HOROVOD_GPU_OPERATIONS=NCCL \
        HOROVOD_NCCL_INCLUDE="$NCCL_INCLUDE" HOROVOD_NCCL_LIB="$NCCL_LINK_DIR" HOROVOD_NCCL_LINK=SHARED \
        HOROVOD_BUILD_CUDA_CC_LIST="$CC_LIST" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 \
        HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
        CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j${MAX_JOBS:-$(nproc)}" \
        "$PY" -m pip --disable-pip-version-check install -v --no-build-isolation --no-cache-dir \
            --no-deps "$src/horovod-$HOROVOD_VERSION" >"$LOG" 2>&1; then
        rm -rf "$src"
        grep -E "error|Error|FAILED" "$LOG" | grep -v "^ *-- " | head -15 >&2
        fail "Horovod $HOROVOD_VERSION with NCCL did not build; full log: $LOG"
    fi
    rm -rf "$src"
    say "built in $((SECONDS - start)) s"
    stamp "$key"
}

check_build() {
    local out
    out=$(PATH="$VENV/bin:$PATH" horovodrun --check-build 2>&1) \
        || fail "horovodrun --check-build failed: $(echo "$out" | tail -1)"
    echo "$out"
    echo "$out" | grep -q "\[X\] NCCL" || fail "horovodrun --check-build does not list NCCL"
    say "Horovod loads with NCCL"
}

nccl_dirs
build_horovod
check_build
