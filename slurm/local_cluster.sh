#!/usr/bin/env bash
# A throw-away SLURM cluster on this machine (root; Debian/Ubuntu), to try the scripts
# before using a real cluster. Installs what is missing (slurmctld/slurmd/munge, and for
# --nodes openssh-server/iproute2); all state, logs and keys live in DIR; ports are picked
# free; the daemons are stopped by pid.
#
# Single node (this host, all its cores):
#   eval "$(slurm/local_cluster.sh start /tmp/slurm)"   # exports SLURM_CONF
#   sbatch --ntasks=2 slurm/train.sbatch --strategy sync --epochs 1 --out runs/try
#   slurm/local_cluster.sh stop /tmp/slurm
#
# Emulated nodes node1..N (network namespace, hostname, tbf-limited link, sshd, slurmd each;
# docs/multinode.md):
#   eval "$(slurm/local_cluster.sh --nodes 2 --rate 1gbit start /tmp/cl)"
#   sbatch --nodes=2 --ntasks-per-node=2 slurm/train.sbatch --strategy sync --out runs/try2
#   slurm/local_cluster.sh exec /tmp/cl node1 horovodrun -np 4 -H node1:2,node2:2 ...
#   slurm/local_cluster.sh stop /tmp/cl                  # also deletes namespaces and bridge
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() {
    echo "usage: slurm/local_cluster.sh [--nodes N [--rate RATE]] start|stop DIR" >&2
    echo "       slurm/local_cluster.sh exec DIR NODE CMD..." >&2
    exit 2
}
[ $# -ge 2 ] || usage
PY="${TOOLKIT_PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${TOOLKIT_PYTHON:-}" ] && PY="$ROOT/.venv/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$ROOT/tests/slurm_cluster.py" "$@"
