#!/usr/bin/env bash
# Scaling sweep: one sbatch job (slurm/train.sbatch) per worker count, for weak and strong
# scaling and for the strategies sync and dasgd, each into its own run directory.
#
#   slurm/sweep.sh --workers 1,2,4,8,16 --out runs/scaling --dry-run -- --model resnet20 \
#       --dataset cifar10 --data-dir /scratch/cifar --epochs 1
#
# Everything is `python -m launch.scaling sweep` (see --help): --dry-run prints the sbatch
# commands, --wait blocks until the jobs end. Python: $TOOLKIT_PYTHON, else the checkout's
# .venv, else python3 on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${TOOLKIT_PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3 || true)"; fi
fi
[ -n "$PY" ] && [ -x "$PY" ] || { echo "sweep.sh: error: no Python found: export TOOLKIT_PYTHON" >&2; exit 2; }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m launch.scaling sweep "$@"
