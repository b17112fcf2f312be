"""Start jobs on the emulated nodes: commands run inside a node, and mpirun / horovodrun
command lines that place ranks on named nodes over the nodes' own interface."""
import os
import sys

from experiments.emulation.network import NODE_IFACE
from experiments.emulation.procs import run_in_group
from toolkit.mpi_policy import launcher_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What ranks on another node need from the launching shell (Open MPI forwards only OMPI_*
# variables and those named with -x; horovodrun forwards the whole environment itself).
FORWARDED = ("PATH", "PYTHONPATH", "OMP_NUM_THREADS")


def node_env(ssh, extra=None, base=None):
    """launcher_env plus the cluster's ssh and this Python first on PATH and the checkout
    importable, for a launcher started on a node."""
    env = launcher_env(extra) if base is None else dict(base, **(extra or {}))
    env["PATH"] = os.pathsep.join([ssh.bin_dir, os.path.dirname(sys.executable),
                                   env.get("PATH", "")])
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    # mpirun's daemons start one another over ssh: keep that to the launching node, whose
    # PATH has the cluster's ssh wrapper.
    env.setdefault("OMPI_MCA_plm_rsh_no_tree_spawn", "1")
    return env


def run_on_node(net, node, argv, env, timeout=600, cwd=REPO):
    """Run argv on `node` in its own process group (a timeout kills the launcher and its
    local ranks, what is left on other nodes dies with its ssh connection)."""
    return run_in_group(net.prefix(node) + list(argv), env=env, timeout=timeout, cwd=cwd)


def host_list(slots):
    """{"node1": 2, "node2": 2} -> "node1:2,node2:2" (rank order follows the dict)."""
    return ",".join(f"{node}:{n}" for node, n in slots.items())


def write_hostfile(path, slots):
    with open(path, "w") as f:
        f.write("".join(f"{node} slots={n}\n" for node, n in slots.items()))
    return path


def mpirun_nodes_argv(hostfile, np, argv, env_names=(), extra=()):
    """mpirun over the nodes of `hostfile`, TCP on the nodes' interface only."""
    cmd = ["mpirun", "-np", str(np), "--hostfile", hostfile, "--bind-to", "none",
           "--map-by", "slot", "--mca", "mpi_yield_when_idle", "1",
           "--mca", "btl", "tcp,vader,self", "--mca", "btl_tcp_if_include", NODE_IFACE,
           "--mca", "oob_tcp_if_include", NODE_IFACE]
    for name in (*FORWARDED, *env_names):
        cmd += ["-x", name]
    return cmd + list(extra) + list(argv)


def horovodrun_nodes_argv(slots, argv, gloo=False, extra=()):
    """horovodrun -np N -H node1:a,node2:b over the nodes' interface."""
    cmd = ["horovodrun", "-np", str(sum(slots.values())), "-H", host_list(slots),
           "--network-interface", NODE_IFACE]
    if gloo:
        cmd.append("--gloo")
    return cmd + list(extra) + list(argv)
