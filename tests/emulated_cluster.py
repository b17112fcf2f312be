"""An emulated multi-node SLURM cluster on this machine (root, Debian/Ubuntu).

N nodes (node1..nodeN), each a network namespace with its own hostname, an address on a
private bridge and a link of its own limited by tc tbf (experiments/emulation/network.py); an
sshd per node reachable with a key generated for the cluster (experiments/emulation/ssh.py),
so horovodrun and mpirun can start ranks on the nodes; one slurmd per node and slurmctld
plus munged in the root namespace, which reaches the nodes through the bridge's address.
All state (SLURM configuration and spool, keys, pid files, logs, the nodes' /etc/hosts)
lives in one directory; everything is stopped by pid and every namespace, veth and the
bridge are deleted on stop, and also when the start fails part-way.

    python tests/slurm_cluster.py --nodes 2 [--rate 1gbit] start DIR   # or slurm/local_cluster.sh
    python tests/slurm_cluster.py exec DIR node1 hostname
    python tests/slurm_cluster.py stop DIR
"""
import os
import shlex
import subprocess
import sys

from tests.slurm_cluster import SlurmCluster, _which, ensure_installed
from experiments.emulation.jobs import node_env, run_on_node
from experiments.emulation.network import NodeNetwork
from experiments.emulation.packages import ensure_programs
from experiments.emulation.procs import alive, read_pid, stop_pid
from experiments.emulation.ssh import NodeSsh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EmulatedCluster(SlurmCluster):
    """SLURM over N emulated nodes. start() / stop(); run_on(node, argv) runs a command on a
    node with the cluster's ssh on PATH (for horovodrun and mpirun)."""

    def __init__(self, root, nodes=2, rate=None, cpus=None, real_memory_mb=1000):
        super().__init__(root, cpus=cpus, real_memory_mb=real_memory_mb)
        if nodes < 1:
            raise ValueError(f"--nodes must be >= 1, got {nodes}")
        self.net = NodeNetwork(self.root, nodes, rate)
        self.ssh = NodeSsh(self.net)

    @classmethod
    def from_state(cls, root):
        """The cluster whose network state STATE/network.json describes (for `stop`)."""
        net = NodeNetwork.load(root)
        if net is None:
            raise ValueError(f"{root} holds no emulated cluster (no network.json)")
        cluster = cls(root, nodes=net.count, rate=net.rate)
        cluster.net = net
        cluster.ssh = NodeSsh(net)
        return cluster

    @property
    def nodes(self):
        return self.net.names

    # --- SLURM configuration -------------------------------------------------------------
    def _controller_line(self):
        # slurmctld only runs on a host whose name is the SlurmctldHost: this host's.
        return f"SlurmctldHost={self.host}({self.net.host_address})"

    def _slurmd_lines(self):
        # %n: every slurmd (same host, one per namespace) gets its own spool, pid and log.
        return [f"SlurmdSpoolDir={self.path('spool', '%n')}",
                f"SlurmdPidFile={self.path('run', 'slurmd-%n.pid')}",
                f"SlurmdLogFile={self.path('log', 'slurmd-%n.log')}"]

    def _node_lines(self):
        lines = [f"NodeName={n} NodeAddr={self.net.address(n)} CPUs={self.cpus} "
                 f"RealMemory={self.real_memory_mb} State=UNKNOWN" for n in self.nodes]
        lines.append(f"TmpFS={self.net.local_dir}")
        lines.append(f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES "
                     f"MaxTime=INFINITE State=UP")
        return lines

    # --- life cycle ----------------------------------------------------------------------
    def start(self, timeout=90):
        """Install what is missing, create the nodes, start sshd, munged, slurmctld and the
        slurmds, wait until every node is idle. A failure removes all of it."""
        ensure_installed()
        ensure_programs()
        try:
            self.net.create()
            self._write_config()
            self.ssh.start()
            self._start_daemons(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nodes(self):
        for node in self.nodes:
            os.makedirs(self.path("spool", node), exist_ok=True)
            self._start(f"slurmd-{node}",
                        self.net.prefix(node) + [_which("slurmd"), "-f", self.conf, "-N", node])

    def stop(self, timeout=20):
        """Cancel jobs, stop the slurmds, controller, munged and sshds by pid, then delete
        the namespaces (killing what still runs in them) and the bridge. Idempotent."""
        if alive(self._pid_of("slurmctld")):
            subprocess.run([_which("scancel") or "scancel", "--full", "--user", "root"],
                           env=self.env(), capture_output=True, timeout=60)
        for node in self.nodes:
            stop_pid(self._pid_of(f"slurmd-{node}"), timeout)
        super().stop(timeout)
        self.ssh.stop()
        self.net.remove()
        self.ssh.release_privsep_dir()

    def _pid_of(self, daemon):
        return read_pid(self.pid_file(daemon))

    # --- using the nodes -----------------------------------------------------------------
    def node_env(self, extra=None, base=None):
        """Environment for a launcher on a node (launcher_env, the cluster's ssh first on
        PATH, the checkout importable) that also reaches this cluster's SLURM."""
        return self.env(node_env(self.ssh, extra, base))

    def run_on(self, node, argv, *, env=None, timeout=600, cwd=REPO):
        """Run argv on `node` (CompletedProcess); env: extra variables."""
        return run_on_node(self.net, node, argv, self.node_env(env), timeout, cwd)


USAGE = ("usage: slurm/local_cluster.sh --nodes N [--rate RATE] start DIR\n"
         "       slurm/local_cluster.sh stop DIR\n"
         "       slurm/local_cluster.sh exec DIR NODE CMD...")


def _parse(argv):
    opts = {"nodes": None, "rate": None}
    while argv[:1] in (["--nodes"], ["--rate"]):
        if len(argv) < 2:
            raise ValueError(f"{argv[0]} needs a value")
        opts[argv[0][2:]] = argv[1]
        argv = argv[2:]
    if opts["nodes"] is not None:
        try:
            opts["nodes"] = int(opts["nodes"])
        except ValueError:
            raise ValueError(f"--nodes must be an integer, got {opts['nodes']!r}") from None
    return opts, argv


def main(argv):
    try:
        opts, rest = _parse(list(argv))
        if rest[:1] == ["exec"] and len(rest) >= 4:
            cluster = EmulatedCluster.from_state(rest[1])
            # Inherit the terminal: an interactive command on a node.
            cmd = cluster.net.prefix(rest[2]) + rest[3:]
            return subprocess.run(cmd, env=cluster.node_env(), cwd=os.getcwd()).returncode
        if len(rest) != 2 or rest[0] not in ("start", "stop"):
            raise ValueError(USAGE)
        if rest[0] == "stop":
            EmulatedCluster.from_state(rest[1]).stop()
            return 0
        cluster = EmulatedCluster(rest[1], nodes=opts["nodes"] or 2, rate=opts["rate"])
        cluster.start()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: emulated cluster: {first} (logs in {os.path.join(argv[-1], 'log')})",
              file=sys.stderr)
        return 2
    print(f"export SLURM_CONF={cluster.conf}")
    print(f"export PATH={shlex.quote(cluster.ssh.bin_dir)}:$PATH")
    print(f"# nodes {' '.join(cluster.nodes)} ({cluster.net.subnet}, link "
          f"{cluster.net.rate or 'unlimited'}); run on a node: slurm/local_cluster.sh exec "
          f"{cluster.root} node1 CMD")
    return 0
