#!/usr/bin/env bash
# One command for a machine with NVIDIA GPUs: sets up the CUDA stack, builds, and runs what no
# CPU machine can run, then writes one JSON summary.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          (default runs/gpu_check)
#
# 1. build      scripts/cuda_build.sh: .venv-cuda with the CUDA torch, toolkit._C as a
#               CUDAExtension (for sm_80, sm_90 + PTX and the GPUs here), registration checks,
#               the layer's CPU tests
# 2. horovod    scripts/cuda_horovod.sh: Horovod with NCCL, `horovodrun --check-build`
# 3. cuda_tests pytest -m cuda: the CUDA kernels against the CPU ones
# 4. bench      python -m launch.bench_layer --device cuda
# 5. dasgd      a 2-rank DaSGD training run, one GPU per rank (needs 2 GPUs: NCCL refuses two
#               ranks on one GPU, so with one GPU it runs 1 rank and says so)
#
# OUT_DIR gets one log per step and summary.json. A step that fails is recorded and the next
# runs when it can. Exit 0 when every step passed, 1 when one failed, 2 when there is no
# GPU or the arguments are wrong (nothing is installed then).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
SCRIPT_NAME=gpu-check
# shellcheck source=scripts/cuda_common.sh
. scripts/cuda_common.sh

[ $# -le 1 ] || fail "usage: bash scripts/gpu_check.sh [OUT_DIR]"
# GPUs as "name, compute capability, driver" lines; none: nothing to check, nothing installed.
command -v nvidia-smi >/dev/null || fail "no NVIDIA GPU here: nvidia-smi not found (run this on a GPU node)"
GPUS=$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null || true)
[ -n "$GPUS" ] || fail "no NVIDIA GPU here: nvidia-smi lists none"
OUT=$(readlink -m "${1:-runs/gpu_check}")
mkdir -p "$OUT" 2>/dev/null || fail "cannot create the output directory $OUT"
STEPS=$OUT/steps.tsv
NGPU=$(echo "$GPUS" | wc -l)
say "$NGPU GPU(s): $(echo "$GPUS" | paste -sd';' -)"

# sm_80 and sm_90 (+ PTX of the highest, for newer GPUs) and the GPUs' own architectures.
arch_list() {
    { printf '8.0\n9.0\n'; echo "$GPUS" | awk -F', ' '{print $2}'; } | sort -u -V \
        | paste -sd';' - | sed 's/$/+PTX/'
}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(arch_list)}

: >"$STEPS"
# run_step NAME COMMAND...: runs it with its output in OUT/NAME.log, records status and time.
run_step() {
    local name=$1 start=$SECONDS rc
    shift
    say "$name: $*"
    "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$STEPS"
    if [ "$rc" -eq 0 ]; then say "$name: ok"; else say "$name: FAILED (exit $rc), see $OUT/$name.log"; fi
    return "$rc"
}
in_tree() { (cd "$TREE" && "$PY" "$@"); }
horovodrun_in_tree() { (cd "$TREE" && PATH="$VENV/bin:$PATH" horovodrun "$@"); }

# The main job (small CNN, invariance layer, DaSGD, the digits), one GPU per rank.
dasgd_run() {
    local ranks=$1
    horovodrun_in_tree -np "$ranks" -H "localhost:$ranks" "$PY" -m launch.train \
        --device cuda --model small_cnn --dataset digits --norm inv --strategy dasgd \
        --out "$OUT/dasgd"
}

if run_step build bash scripts/cuda_build.sh; then
    cp "$TREE/cuda_build_check.json" "$OUT/" 2>/dev/null
    run_step horovod bash scripts/cuda_horovod.sh
    horovod_rc=$?
    # shellcheck disable=SC2046  # one argument per test file that has CUDA tests
    run_step cuda_tests in_tree -m pytest -q -p no:cacheprovider -m cuda -rs \
        --junitxml "$OUT/cuda_tests.xml" $(cd "$TREE" && grep -l "mark.cuda" tests/test_*.py)
    run_step bench in_tree -m launch.bench_layer --device cuda --json "$OUT/bench_layer_cuda.json"
    if [ "$horovod_rc" -ne 0 ]; then
        printf 'dasgd\tskipped: Horovod with NCCL did not build\t0\n' >>"$STEPS"
    elif [ "$NGPU" -ge 2 ]; then
        run_step dasgd dasgd_run 2
    else
        run_step dasgd dasgd_run 1
        printf 'dasgd_ranks\t1 (one GPU: NCCL refuses two ranks on one GPU)\t0\n' >>"$STEPS"
    fi
fi
"${PYTHON:-python3}" scripts/gpu_summary.py "$OUT" --gpus "$GPUS" --arch-list "$TORCH_CUDA_ARCH_LIST" \
    || exit 1
