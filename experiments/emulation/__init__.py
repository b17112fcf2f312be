"""Several "nodes" on one Linux machine (root): one network namespace, hostname and
rate-limited link per node on a private bridge (network.py), an sshd per node (ssh.py).
Used by the emulated SLURM cluster (slurm/local_cluster.sh --nodes N) and by the
per-node-link benchmark (python -m launch.bench_nodes). docs/multinode.md describes both."""
