# Shared by scripts/cuda_build.sh, scripts/cuda_horovod.sh and scripts/gpu_check.sh (sourced,
# from the checkout's root): where the CUDA stack lives and how it is installed.
# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this

TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VENV=$(readlink -m "${CUDA_VENV:-.venv-cuda}")
TREE=$(readlink -m "${CUDA_TREE:-build/cuda-tree}")
INDEX_URL=${CUDA_INDEX_URL:-https://pypi.org/simple}
PY=$VENV/bin/python
STAMPS=$VENV/.stamps

say() { echo "[${SCRIPT_NAME:-cuda}] $*"; }
fail() { echo "error: $*" >&2; exit 2; }
done_already() { [ -f "$STAMPS/$1" ]; }
stamp() { mkdir -p "$STAMPS"; touch "$STAMPS/$1"; }

# The CUDA toolkit root as nvcc itself reports it. torch guesses the grandparent of the nvcc on
# PATH, which is wrong when that nvcc is a wrapper script living elsewhere (/usr/local/bin).
cuda_home() {
    if [ -n "${CUDA_HOME:-}" ]; then echo "$CUDA_HOME"; return; fi
    local nvcc top
    nvcc=$(command -v nvcc || true)
    [ -n "$nvcc" ] || nvcc=/usr/local/cuda/bin/nvcc
    [ -x "$nvcc" ] || fail "nvcc not found on PATH nor in /usr/local/cuda/bin: install the CUDA toolkit or set CUDA_HOME"
    top=$("$nvcc" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
    [ -n "$top" ] || fail "cannot tell the CUDA toolkit root from $nvcc --dryrun; set CUDA_HOME"
    readlink -f "$top"
}

# pip against the registry only: a site's pip configuration may list local wheel directories
# that hold the CPU build of the same torch version (2.13.0+cpu satisfies ==2.13.0).
# registry_pip install|download ARGS...
registry_pip() {
    local command=$1
    shift
    env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null \
        "$PY" -m pip --disable-pip-version-check "$command" -q --index-url "$INDEX_URL" "$@"
}

# Directory of a package inside the CUDA venv (e.g. nvidia/nccl), or nothing.
venv_package_dir() {
    "$PY" -c "import os, sysconfig; d = os.path.join(sysconfig.get_paths()['purelib'], '$1'); print(d if os.path.isdir(d) else '')"
}
