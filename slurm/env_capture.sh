#!/usr/bin/env bash
# Print the software environment of a job at the top of its log, so that a scaling result
# can always be traced back to the modules, MPI, torch and Horovod that produced it.
# Usage: env_capture.sh PYTHON     (sourced or run; never fails the job)
PY="${1:-python3}"
# A stop warning (SIGUSR1) sent to every process of the job must not kill the capture half
# way: the job script's own handler remembers it (ignored here and in the commands below).
trap '' USR1

echo "===== environment capture ====="
echo "date:        $(date -Is)"
echo "host:        $(hostname)"
echo "user:        $(id -un) (uid $(id -u))"
echo "job:         ${SLURM_JOB_ID:-none} (${SLURM_JOB_NAME:-no name}) on ${SLURM_JOB_NODELIST:-$(hostname -s)}"
echo "tasks:       ntasks=${SLURM_NTASKS:-?} nodes=${SLURM_JOB_NUM_NODES:-?}" \
     "tasks/node=${SLURM_TASKS_PER_NODE:-?} cpus/task=${SLURM_CPUS_PER_TASK:-?}" \
     "gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS:-0}}"
echo "launcher:    ${TOOLKIT_LAUNCHER:-srun}"
echo "OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
echo "python:      $PY"

# `module` is a shell function defined by Lmod/Environment Modules, not a binary.
if type module >/dev/null 2>&1; then
    echo "--- module list ---"
    module list 2>&1
else
    echo "module list: no module system"
fi

echo "--- mpirun --version ---"
if command -v mpirun >/dev/null 2>&1; then
    mpirun --version 2>&1 | head -n 2
else
    echo "mpirun: not on PATH"
fi

echo "--- python packages ---"
"$PY" - <<'EOF' 2>&1
import platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "horovod", "mpi4py", "numpy"):
    try:
        mod = __import__(name)
        extra = ""
        if name == "torch":
            extra = f" (cuda available: {mod.cuda.is_available()}, threads: {mod.get_num_threads()})"
        if name == "mpi4py":
            from mpi4py import MPI  # noqa: F401  (imports the MPI library; reports its vendor)
            extra = f" ({MPI.Get_library_version().splitlines()[0].strip()})"
        print(f"{name} {getattr(mod, '__version__', '?')}{extra}")
    except Exception as exc:  # report, never fail the job over the capture
        print(f"{name}: not importable ({type(exc).__name__}: {exc})")
EOF

echo "--- horovodrun --check-build ---"
HVDRUN="$(dirname "$PY")/horovodrun"
[ -x "$HVDRUN" ] || HVDRUN="$(command -v horovodrun || true)"
# --check-build starts a Python per framework (~10 s); its answer depends only on the
# Horovod build, so it is cached under a key made of the build's shared libraries (path,
# size, mtime): a rebuilt or different Horovod gets a fresh check.
KEY="$("$PY" -c '
import hashlib, importlib.util, os
root = os.path.dirname(importlib.util.find_spec("horovod").origin)
h = hashlib.sha1(root.encode())
for d, _, files in sorted(os.walk(root)):
    for f in sorted(files):
        if f.endswith(".so"):
            st = os.stat(os.path.join(d, f))
            h.update(f"{d}/{f}:{st.st_size}:{st.st_mtime_ns}".encode())
print(h.hexdigest()[:16])' 2>/dev/null)"
CACHE_DIR="${TOOLKIT_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/toolkit}"
CACHE="$CACHE_DIR/horovod-check-build-$KEY.txt"
if [ -z "$HVDRUN" ]; then
    echo "horovodrun: not found"
elif [ -n "$KEY" ] && [ -s "$CACHE" ]; then
    echo "(cached result for this Horovod build, key $KEY, from $(date -r "$CACHE" -Is))"
    cat "$CACHE"
else
    out="$("$PY" "$HVDRUN" --check-build 2>&1)"
    rc=$?
    printf '%s\n' "$out" | sed -n '1,40p'
    if [ $rc -eq 0 ] && [ -n "$KEY" ] && mkdir -p "$CACHE_DIR" 2>/dev/null; then
        # Write, then rename: a concurrent job never reads a half-written file.
        printf '%s\n' "$out" > "$CACHE.$$" && mv -f "$CACHE.$$" "$CACHE"
    fi
fi

if command -v nvidia-smi >/dev/null 2>&1; then
    echo "--- nvidia-smi -L ---"
    nvidia-smi -L 2>&1
fi
echo "===== end of environment capture ====="
