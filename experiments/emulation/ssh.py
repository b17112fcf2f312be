"""An sshd per emulated node, reachable as root with a key generated for this cluster.

Keys, configuration, known_hosts, pid files and logs all live in STATE/ssh. Clients reach the
nodes through STATE/bin/ssh, a wrapper that adds `-F STATE/ssh/config`: put STATE/bin first
on PATH and horovodrun and mpirun (which both call `ssh` from PATH) reach node1..nodeN with
the generated key and a known_hosts that already holds the nodes' host key.
"""
import os
import shutil
import subprocess
import time

from experiments.emulation.procs import alive, read_pid, stop_pid

SSHD = "/usr/sbin/sshd"
# sshd refuses to start without its privilege-separation directory (normally made by the
# init system, absent in containers).
PRIVSEP_DIR = "/run/sshd"


class NodeSsh:
    def __init__(self, network):
        self.net = network
        self.dir = os.path.join(network.state_dir, "ssh")
        self.bin_dir = os.path.join(network.state_dir, "bin")

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def pid_file(self, node):
        return self.path(f"sshd-{node}.pid")

    @property
    def wrapper(self):
        return os.path.join(self.bin_dir, "ssh")

    def _keygen(self, path):
        if not os.path.exists(path):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                            "toolkit-emulated-cluster", "-f", path], check=True,
                           capture_output=True)

    def write_config(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.makedirs(self.bin_dir, exist_ok=True)
        self._keygen(self.path("host_ed25519"))
        self._keygen(self.path("id_ed25519"))
        shutil.copyfile(self.path("id_ed25519.pub"), self.path("authorized_keys"))
        with open(self.path("host_ed25519.pub")) as f:
            host_key = " ".join(f.read().split()[:2])
        names = self.net.names
        with open(self.path("known_hosts"), "w") as f:
            for n in names:
                f.write(f"{n},{self.net.address(n)} {host_key}\n")
        with open(self.path("sshd_config"), "w") as f:
            f.write("\n".join([
                "Port 22",
                f"HostKey {self.path('host_ed25519')}",
                f"AuthorizedKeysFile {self.path('authorized_keys')}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                # The state directory may sit in a world-writable /tmp.
                "StrictModes no",
                "PrintMotd no",
                # Many ranks' launchers connect at once (horovodrun checks every host).
                "MaxStartups 100",
                "LogLevel ERROR",
            ]) + "\n")
        with open(self.path("config"), "w") as f:
            f.write("\n".join([
                f"Host {' '.join(names)} " + " ".join(self.net.address(n) for n in names),
                "  User root",
                f"  IdentityFile {self.path('id_ed25519')}",
                "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {self.path('known_hosts')}",
                "  StrictHostKeyChecking yes",
                "  BatchMode yes",
                "  LogLevel ERROR",
            ]) + "\n")
        with open(self.wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec /usr/bin/ssh -F "{self.path("config")}" "$@"\n')
        os.chmod(self.wrapper, 0o755)

    def start(self, timeout=20):
        """One sshd per node, listening on the node's address only."""
        self.write_config()
        if not os.path.isdir(PRIVSEP_DIR):
            os.makedirs(PRIVSEP_DIR, mode=0o755)
            # Remembered so that stop removes it again (release_privsep_dir).
            open(self.path("privsep_dir_created"), "w").close()
        for node in self.net.names:
            argv = self.net.prefix(node) + [
                SSHD, "-f", self.path("sshd_config"), "-E", self.path(f"sshd-{node}.log"),
                "-o", f"ListenAddress={self.net.address(node)}",
                "-o", f"PidFile={self.pid_file(node)}"]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"sshd on {node} failed to start: "
                                   f"{(proc.stderr or proc.stdout).strip()[-500:]}")
            deadline = time.time() + timeout
            while not alive(read_pid(self.pid_file(node))):
                if time.time() > deadline:
                    raise RuntimeError(f"sshd on {node} wrote no live pid to "
                                       f"{self.pid_file(node)}")
                time.sleep(0.1)
        self.wait_reachable(timeout)

    def wait_reachable(self, timeout):
        """Every node answers `ssh node true` from node1 (where the launchers run)."""
        first = self.net.names[0]
        for node in self.net.names:
            deadline = time.time() + timeout
            while True:
                proc = subprocess.run(self.net.prefix(first) + [self.wrapper, node, "true"],
                                      capture_output=True, text=True, timeout=30)
                if proc.returncode == 0:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"ssh {first} -> {node} fails: {proc.stderr.strip()}")
                time.sleep(0.3)

    def stop(self):
        for node in self.net.names:
            stop_pid(read_pid(self.pid_file(node)))

    def release_privsep_dir(self):
        """Remove /run/sshd if this cluster created it and no sshd (another emulated
        cluster's, or a system one started since) still needs it."""
        marker = self.path("privsep_dir_created")
        if not os.path.exists(marker) or _any_sshd_running():
            return
        try:
            os.rmdir(PRIVSEP_DIR)
        except OSError:  # not empty or already gone: leave it
            pass
        os.unlink(marker)


def _any_sshd_running():
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.readlink(f"/proc/{pid}/exe") == SSHD:
                    return True
            except OSError:
                continue
    return False
