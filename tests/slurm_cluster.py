"""A real single-node SLURM cluster on this host, for the SLURM tests.

Installs Debian's slurmctld/slurmd/munge when missing, writes a private slurm.conf and
munge key into a temporary directory, starts munged, slurmctld and slurmd with explicit pid
files, waits until the node is idle and stops the daemons by pid at the end. Everything
(state, spool, logs, munge socket) lives in the temporary directory, and the ports are
picked free, so a system SLURM on the same host is neither used nor disturbed.

Used as a pytest fixture by tests/test_slurm.py and as a script by slurm/local_cluster.sh:
    python tests/slurm_cluster.py start DIR   # prints `export SLURM_CONF=...`
    python tests/slurm_cluster.py stop DIR
With --nodes N the cluster is the emulated multi-node one of tests/emulated_cluster.py
(a network namespace, hostname, rate-limited link, sshd and slurmd per node):
    python tests/slurm_cluster.py --nodes 2 [--rate 1gbit] start DIR
    python tests/slurm_cluster.py exec DIR node1 CMD...   # run CMD on a node
"""
import os
import socket
import subprocess
import sys
import time

if __name__ == "__main__":
    # Run as a script (slurm/local_cluster.sh): make `tests.` and `toolkit.` importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.emulation.packages import ensure_programs, which as _which  # noqa: E402
from experiments.emulation.procs import alive as _alive, read_pid as _read_pid, stop_pid  # noqa: E402

# program -> the Debian package that provides it
SLURM_PROGRAMS = {"slurmctld": "slurmctld", "slurmd": "slurmd", "munged": "munge",
                  "sbatch": "slurm-client", "sinfo": "slurm-client", "scontrol": "slurm-client",
                  "srun": "slurm-client"}


def ensure_installed():
    """apt-get install the SLURM and munge packages when a program is missing."""
    ensure_programs(SLURM_PROGRAMS)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """Single-node cluster rooted at `root`. start() / stop(); env() for client commands."""

    DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order: node, controller, auth

    def __init__(self, root, cpus=None, real_memory_mb=1000):
        self.root = os.path.abspath(root)
        # The node's real core count: declaring fewer hides cores from jobs, more
        # oversubscribes them.
        self.cpus = cpus or os.cpu_count() or 1
        self.real_memory_mb = real_memory_mb
        self.host = socket.gethostname().split(".")[0]
        self.conf = os.path.join(self.root, "etc", "slurm.conf")
        self.munge_socket = os.path.join(self.root, "munge", "munge.socket")
        self.extra_env = {}  # added to env(): jobs inherit the submitter's environment

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def pid_file(self, daemon):
        return self.path("run", f"{daemon}.pid")

    def env(self, base=None):
        """Environment in which sbatch/sinfo/scontrol talk to this cluster."""
        env = dict(os.environ if base is None else base)
        env.update(self.extra_env)
        env["SLURM_CONF"] = self.conf
        env["PATH"] = env.get("PATH", "") + os.pathsep + "/usr/sbin"
        return env

    def _write_config(self):
        for d in ("etc", "run", "log", "state", "spool", "munge"):
            os.makedirs(self.path(d), exist_ok=True)
        # munged insists that its directories are not writable by others.
        for d in ("munge", "run"):
            os.chmod(self.path(d), 0o700)
        key = self.path("munge", "munge.key")
        if not os.path.exists(key):
            with open(key, "wb") as f:
                f.write(os.urandom(128))
            os.chmod(key, 0o600)
        lines = [
            "ClusterName=toolkit-test",
            self._controller_line(),
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.path('state')}",
            f"SlurmctldPidFile={self.pid_file('slurmctld')}",
            f"SlurmctldLogFile={self.path('log', 'slurmctld.log')}",
            *self._slurmd_lines(),
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "ReturnToService=2",
            # Without accounting, finished jobs are only visible while the controller keeps
            # them: keep them long enough for the tests to read their final state.
            "MinJobAge=3600",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "KillWait=5",
            *self._node_lines(),
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _controller_line(self):
        # Explicit loopback addresses: works even where the host name does not resolve.
        return f"SlurmctldHost={self.host}(127.0.0.1)"

    def _slurmd_lines(self):
        return [f"SlurmdSpoolDir={self.path('spool')}",
                f"SlurmdPidFile={self.pid_file('slurmd')}",
                f"SlurmdLogFile={self.path('log', 'slurmd.log')}"]

    def _node_lines(self):
        return [f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
                f"RealMemory={self.real_memory_mb} State=UNKNOWN",
                f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP"]

    def _start(self, daemon, argv):
        proc = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"{daemon} failed to start ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-800:]}"
                               f"{self._log_tail(daemon)}")
        deadline = time.time() + 20
        while time.time() < deadline:
            pid = _read_pid(self.pid_file(daemon))
            if pid and _alive(pid):
                return pid
            time.sleep(0.2)
        raise RuntimeError(f"{daemon} wrote no live pid to {self.pid_file(daemon)}"
                           f"{self._log_tail(daemon)}")

    def _log_tail(self, daemon, n=1500):
        try:
            with open(self.path("log", f"{daemon}.log")) as f:
                return "\n--- " + daemon + " log ---\n" + f.read()[-n:]
        except OSError:
            return ""

    def start(self, timeout=60):
        """Install if needed, configure, start the three daemons, wait for an idle node.
        On failure the daemons already started are stopped before the error propagates."""
        ensure_installed()
        self._write_config()
        try:
            self._start_daemons(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_daemons(self, timeout):
        self._start("munged", [_which("munged"), "--force",
                               f"--key-file={self.path('munge', 'munge.key')}",
                               f"--socket={self.munge_socket}",
                               f"--pid-file={self.pid_file('munged')}",
                               f"--log-file={self.path('log', 'munged.log')}",
                               f"--seed-file={self.path('munge', 'munge.seed')}"])
        # -i: ignore state left by an earlier cluster in the same directory.
        self._start("slurmctld", [_which("slurmctld"), "-i", "-f", self.conf])
        self._start_nodes()
        self.wait_idle(timeout)

    def _start_nodes(self):
        self._start("slurmd", [_which("slurmd"), "-f", self.conf])

    def wait_idle(self, timeout):
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env(),
                                  capture_output=True, text=True)
            state = (proc.stdout or proc.stderr).strip()
            if proc.returncode == 0 and state and all(
                    line.startswith("idle") for line in state.splitlines()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"node(s) not idle after {timeout}s (sinfo: {state!r})"
                           f"{self._log_tail('slurmctld')}{self._log_tail('slurmd')}")

    def stop(self, timeout=20):
        """SIGTERM each daemon by its pid file, SIGKILL after `timeout`. Idempotent."""
        for daemon in self.DAEMONS:
            stop_pid(_read_pid(self.pid_file(daemon)), timeout)


def main(argv):
    if argv[:1] in (["--nodes"], ["--rate"], ["exec"]) or (
            len(argv) == 2 and argv[0] == "stop" and _is_emulated(argv[1])):
        from tests.emulated_cluster import main as emulated_main
        return emulated_main(argv)
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        sys.exit("usage: slurm_cluster.py [--nodes N [--rate R]] start|stop DIR\n"
                 "       slurm_cluster.py exec DIR NODE CMD...")
    cluster = SlurmCluster(argv[1])
    if argv[0] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()


def _is_emulated(root):
    # The emulated cluster keeps its network's layout in its state directory.
    return os.path.exists(os.path.join(root, "network.json"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
