#!/usr/bin/env bash
# Builds toolkit._C as a CUDAExtension against the CUDA build of torch and checks what can be
# checked without a GPU: the extension imports, every kernel of the backend contract is
# registered for the CUDA dispatch key, the device code is there for the requested
# architectures, and the layer's CPU tests pass against this build.
#
#   bash scripts/cuda_build.sh            (= make cuda-build; downloads ~4 GB the first time)
#
# Everything lands beside the CPU stack, never in it: the virtual environment $CUDA_VENV
# (default .venv-cuda) and a staged copy of the sources, $CUDA_TREE (default build/cuda-tree),
# built in place there, so the checkout's own toolkit/_C*.so (the CPU build .venv uses) is
# left alone. Idempotent: finished install steps are stamped by version in $CUDA_VENV/.stamps.
#
# Environment: TORCH_VERSION (2.13.0), TORCH_CUDA_ARCH_LIST (8.0;9.0+PTX), CUDA_HOME (asked
# from nvcc), CUDA_INDEX_URL (the registry torch comes from), MAX_JOBS (nproc),
# CUDA_BUILD_TESTS (the pytest selection run at the end; empty skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=cuda-build
# shellcheck source=scripts/cuda_common.sh
. scripts/cuda_common.sh
ARCHS=${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}
TESTS=${CUDA_BUILD_TESTS-tests/test_invariance_*.py tests/test_dasgd_kernels.py}

setup_venv() {
    [ -x "$PY" ] || { say "venv $VENV"; "${PYTHON:-python3}" -m venv "$VENV"; }
    if ! done_already "torch-$TORCH_VERSION"; then
        say "torch==$TORCH_VERSION, CUDA build, with the CUDA libraries and headers it depends on"
        "$PY" -m pip uninstall -q -y torch >/dev/null 2>&1 || true
        registry_pip install "torch==$TORCH_VERSION"
        "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'error: torch ' + torch.__version__ + ' is a CPU build; expected the CUDA one')"
        stamp "torch-$TORCH_VERSION"
    fi
    local deps=(numpy pytest ninja setuptools wheel tqdm scikit-learn packaging)
    local key
    key=$(echo "${deps[*]}" | md5sum | cut -c1-8)
    if ! done_already "deps-$key"; then
        say "python deps: ${deps[*]}"
        registry_pip install "torch==$TORCH_VERSION" "${deps[@]}"
        stamp "deps-$key"
    fi
}

# torch refuses to build against a toolkit of another CUDA major version; say so up front.
check_versions() {
    local nvcc_ver torch_ver
    nvcc_ver=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
    torch_ver=$("$PY" -c "import torch; print(torch.version.cuda)")
    say "nvcc $nvcc_ver at $CUDA_HOME, torch $TORCH_VERSION built with CUDA $torch_ver"
    [ "${nvcc_ver%%.*}" = "${torch_ver%%.*}" ] || \
        fail "nvcc is CUDA $nvcc_ver but torch was built with CUDA $torch_ver: the major versions must match"
}

# A copy of what the build and the tests read; removed files disappear, unchanged ones keep
# their times so that ninja recompiles only what changed.
stage_tree() {
    mkdir -p "$TREE"
    rm -rf "$TREE/toolkit" "$TREE/experiments" "$TREE/launch" "$TREE/models" "$TREE/tests" \
        "$TREE/scripts"
    tar -cf - --exclude='*.so' --exclude=__pycache__ \
        setup.py pyproject.toml pytest.ini toolkit experiments launch models tests scripts | \
        tar -xf - -C "$TREE"
}

build() {
    say "building toolkit._C (CUDAExtension, TORCH_CUDA_ARCH_LIST=$ARCHS) in $TREE; log: $TREE/build.log"
    local start=$SECONDS
    if ! (cd "$TREE" && PATH="$VENV/bin:$PATH" \
            TORCH_CUDA_ARCH_LIST="$ARCHS" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            "$PY" setup.py build_ext --inplace >build.log 2>&1); then
        grep -E "error|Error" "$TREE/build.log" | head -20 >&2
        fail "the CUDA build failed; full log: $TREE/build.log"
    fi
    say "built in $((SECONDS - start)) s"
    summarize_warnings "$TREE/build.log"
}

# One line per distinct warning (file:line: message), with how often it appeared.
summarize_warnings() {
    local count
    count=$(grep -c "warning" "$1" || true)
    say "build log: $count warning lines; distinct:"
    grep -oE "[^ /]+\.(h|hpp|cuh|cu|cpp|inc)(:[0-9]+)+: warning: .*|nvcc warning : .*|Warning: .*" "$1" \
        | sort | uniq -c | sort -rn | head -20 || true
}

check_build() {
    local archs
    archs=$(echo "$ARCHS" | tr ';' '\n' | sed 's/+PTX//; s/\.//' | paste -sd, -)
    say "checking the build in a process without a GPU (CUDA_VISIBLE_DEVICES empty)"
    (cd "$TREE" && CUDA_VISIBLE_DEVICES="" "$PY" \
        scripts/check_cuda_build.py --archs "$archs" --json cuda_build_check.json) \
        || fail "the CUDA build checks failed (see above; report: $TREE/cuda_build_check.json)"
}

run_tests() {
    [ -n "$TESTS" ] || return 0
    say "CPU tests of the layer against the CUDA build: $TESTS"
    # shellcheck disable=SC2086  # TESTS is a list of paths and globs, expanded inside TREE
    (cd "$TREE" && CUDA_VISIBLE_DEVICES="" "$PY" -m pytest -q -p no:cacheprovider $TESTS) \
        || fail "tests failed against the CUDA build"
}

CUDA_HOME=$(cuda_home)
export CUDA_HOME
[ -f "$CUDA_HOME/include/cuda_runtime_api.h" ] || fail "CUDA_HOME=$CUDA_HOME has no include/cuda_runtime_api.h"
setup_venv
check_versions
stage_tree
build
check_build
run_tests
say "done: $TREE/toolkit/$(cd "$TREE/toolkit" && ls _C*.so)"
