#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine (root; Debian/Ubuntu), to try the
# scripts before using a real cluster. Installs slurmctld/slurmd/munge if missing; all
# state, logs and the munge key live in DIR; ports are picked free.
#
#   eval "$(slurm/local_cluster.sh start /tmp/slurm)"   # exports SLURM_CONF
#   sbatch --ntasks=2 slurm/train.sbatch --strategy sync --epochs 1 --out runs/try
#   slurm/local_cluster.sh stop /tmp/slurm               # stops the daemons by pid
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -eq 2 ] && { [ "$1" = start ] || [ "$1" = stop ]; } || {
    echo "usage: slurm/local_cluster.sh start|stop DIR" >&2; exit 2; }
PY="${TOOLKIT_PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${TOOLKIT_PYTHON:-}" ] && PY="$ROOT/.venv/bin/python"
exec "$PY" "$ROOT/tests/slurm_cluster.py" "$1" "$2"
