"""N emulated nodes on one machine: a network namespace per node, plugged into a private
bridge by a veth pair whose two ends are each limited by a token bucket (tc tbf), so every
node has its own full-duplex link of a given rate, like a NIC on a non-blocking switch.

Nothing outside what is created here is touched: all interfaces carry the prefix `tkn` and a
random token, the addresses come from a 10.x.y.0/24 that no route of the host uses yet, and
the node's /etc/hosts is a file in the state directory bind-mounted over /etc/hosts only
inside the node's own mount namespace. Processes enter a node through `prefix()`: its
network namespace, UTS and mount namespaces of their own (hostname = the node's name,
/etc/hosts = the cluster's), the rest of the file system shared with the host.

The layout is written to STATE/network.json before anything is created, so `remove()`
(also after a failed or interrupted creation) finds and deletes exactly what exists.
"""
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time

NODE_IFACE = "tkneth"   # the node's side of its veth, the same name inside every node
STATE_FILE = "network.json"
# Entering a node: hostname and hosts file in the fresh UTS / mount namespaces, then exec.
ENTER_SCRIPT = ('hostname "$1" && mount --bind "$2" /etc/hosts && mount --bind "$3" "$4" '
                '&& shift 4 && exec "$@"')


RATE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit)$")


def rate_bytes_per_s(rate):
    """'100mbit' -> 12.5e6 (tc's decimal units)."""
    number, unit = re.match(r"^([\d.]+)(\w+)$", check_rate(rate).strip().lower()).groups()
    return float(number) * {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[unit] / 8


class NetworkError(RuntimeError):
    pass


def check_rate(rate):
    """The link rate in tc's syntax (decimal units), e.g. 200mbit or 1gbit."""
    if not RATE.match(str(rate).strip().lower()) or float(re.match(r"[\d.]+", rate)[0]) <= 0:
        raise ValueError(f"--rate must look like 200mbit, 1gbit or 500kbit (tc syntax), "
                         f"got {rate!r}")
    return rate


def _run(argv, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _used_ipv4_networks():
    out = _run(["ip", "-4", "route", "show", "table", "all"]).stdout
    nets = []
    for line in out.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("default", "broadcast", "local", "unreachable", "blackhole", "prohibit"):
            word = line.split()[1] if word != "default" else ""
        try:
            nets.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    return nets


def free_subnet():
    """A 10.213.x.0/24 that overlaps no route of this host (so none of its addresses)."""
    used = _used_ipv4_networks()
    for third in range(256):
        net = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetworkError("no free 10.213.x.0/24 subnet on this host")


class NodeNetwork:
    """Bridge + one namespace per node. `nodes` are named node1..nodeN."""

    def __init__(self, state_dir, nodes=2, rate=None):
        self.state_dir = os.path.abspath(state_dir)
        self.count = nodes
        self.rate = check_rate(rate) if rate is not None else None
        self.token = None
        self.subnet = None

    # --- names and addresses -------------------------------------------------------------
    @property
    def names(self):
        return [f"node{i}" for i in range(1, self.count + 1)]

    @property
    def bridge(self):
        return f"tkn{self.token}b"

    def netns(self, name):
        return f"tkn{self.token}-{name}"

    def host_iface(self, name):
        return f"tkn{self.token}n{name[4:]}"

    def address(self, name):
        return str(ipaddress.ip_network(self.subnet)[10 + int(name[4:])])

    @property
    def host_address(self):
        """The bridge's own address in the root namespace (where the SLURM controller runs)."""
        return str(ipaddress.ip_network(self.subnet)[1])

    @property
    def hosts_file(self):
        return os.path.join(self.state_dir, "etc", "hosts")

    @property
    def local_dir(self):
        """One path, a different directory on every node: node-local scratch (SLURM's
        TmpFS, where srun's PMIx keeps per-node files that would collide in a shared /tmp)."""
        return os.path.join(self.state_dir, "node-local")

    def _local_source(self, name):
        return os.path.join(self.state_dir, "nodes", name, "local")

    # --- state ---------------------------------------------------------------------------
    def _save(self):
        os.makedirs(self.state_dir, exist_ok=True)
        with open(os.path.join(self.state_dir, STATE_FILE), "w") as f:
            json.dump({"token": self.token, "nodes": self.count, "subnet": self.subnet,
                       "rate": self.rate}, f)

    @classmethod
    def load(cls, state_dir):
        """The network described in STATE/network.json, or None if there is none."""
        try:
            with open(os.path.join(state_dir, STATE_FILE)) as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        net = cls(state_dir, state["nodes"], state.get("rate"))
        net.token, net.subnet = state["token"], state["subnet"]
        return net

    # --- life cycle ----------------------------------------------------------------------
    def create(self):
        """Bridge, namespaces, veths, addresses, tbf; removes all of it if a step fails."""
        if self.count < 1:
            raise ValueError(f"--nodes must be >= 1, got {self.count}")
        links = _run(["ip", "-o", "link", "show"]).stdout
        while self.token is None or f"tkn{self.token}" in links:
            self.token = secrets.token_hex(2)
        self.subnet = str(free_subnet())
        self._save()
        try:
            self._create()
        except BaseException:
            self.remove()
            raise
        return self

    def _create(self):
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for name in self.names:
            ns, host_end = self.netns(name), self.host_iface(name)
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", NODE_IFACE,
                  "netns", ns])
            _run(["ip", "link", "set", host_end, "master", self.bridge])
            _run(["ip", "link", "set", host_end, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", NODE_IFACE])
            _run(["ip", "-n", ns, "link", "set", NODE_IFACE, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        if self.rate:
            self.limit(self.rate)
        self._write_hosts()

    def limit(self, rate):
        """Token bucket of `rate` (tc syntax, e.g. 200mbit) on both ends of every node's
        veth: what a node sends and what it receives each get the full rate. The bucket
        holds 2 ms of traffic (at least 16 KB): a larger one lets small messages pass
        at memory speed, which no real link does."""
        burst = f"{max(16_000, int(rate_bytes_per_s(rate) * 0.002))}b"
        for name in self.names:
            for prefix, dev in ((["ip", "netns", "exec", self.netns(name)], NODE_IFACE),
                                ([], self.host_iface(name))):
                _run(prefix + ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                               rate, "burst", burst, "latency", "100ms"])
        self.rate = rate
        self._save()

    def unlimit(self):
        for name in self.names:
            _run(["ip", "netns", "exec", self.netns(name), "tc", "qdisc", "del", "dev",
                  NODE_IFACE, "root"], check=False)
            _run(["tc", "qdisc", "del", "dev", self.host_iface(name), "root"], check=False)
        self.rate = None
        self._save()

    def _write_hosts(self):
        os.makedirs(os.path.dirname(self.hosts_file), exist_ok=True)
        os.makedirs(self.local_dir, exist_ok=True)
        for name in self.names:
            os.makedirs(self._local_source(name), mode=0o1777, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        lines = ["127.0.0.1 localhost", f"{self.host_address} {host} tkncontroller"]
        lines += [f"{self.address(n)} {n}" for n in self.names]
        with open(self.hosts_file, "w") as f:
            f.write("\n".join(lines) + "\n")

    def pids(self, name):
        """Processes living in the node's network namespace (all started through it)."""
        proc = _run(["ip", "netns", "pids", self.netns(name)], check=False)
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    def kill_leftovers(self, grace=5):
        """SIGTERM, then SIGKILL, every process still inside one of the nodes (ranks or
        job steps that outlived their daemon)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [p for n in self.names for p in self.pids(n)]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + grace
            while pids and time.time() < deadline:
                if not any(self.pids(n) for n in self.names):
                    return
                time.sleep(0.2)

    def remove(self):
        """Delete what exists of the namespaces (and with them the veths) and the bridge.
        Idempotent; safe after a partial creation."""
        if self.token is None:
            return
        existing = _run(["ip", "netns", "list"], check=False).stdout
        self.kill_leftovers()
        for name in self.names:
            if self.netns(name) in existing:
                _run(["ip", "netns", "del", self.netns(name)], check=False)
            # A veth whose peer never reached the namespace is still in the root namespace.
            _run(["ip", "link", "del", self.host_iface(name)], check=False)
        _run(["ip", "link", "del", self.bridge], check=False)

    # --- entering a node -----------------------------------------------------------------
    def prefix(self, name):
        """argv prefix that runs a command inside node `name` (its network, its hostname,
        its /etc/hosts)."""
        if name not in self.names:
            raise ValueError(f"unknown node {name!r} (nodes: {', '.join(self.names)})")
        # nsenter, not `ip netns exec`: the latter mounts a sysfs of the namespace over
        # /sys, which hides /sys/fs/cgroup (slurmd will not start without it).
        return ["nsenter", f"--net=/run/netns/{self.netns(name)}", "unshare", "--uts",
                "--mount", "--propagation", "slave", "--", "sh", "-c", ENTER_SCRIPT, "sh",
                name, self.hosts_file, self._local_source(name), self.local_dir]
