"""Install the Debian packages the emulated nodes need when one of their programs is missing."""
import os
import shutil
import subprocess

# program -> Debian package providing it
NODE_PROGRAMS = {"ip": "iproute2", "tc": "iproute2", "unshare": "util-linux", "nsenter": "util-linux",
                 "sshd": "openssh-server", "ssh": "openssh-client",
                 "ssh-keygen": "openssh-client"}


def which(name):
    # Daemons live in /usr/sbin, which is not always on PATH for non-login shells.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def ensure_programs(programs=NODE_PROGRAMS):
    """apt-get install the packages of the missing programs (root, Debian/Ubuntu)."""
    missing = sorted({pkg for prog, pkg in programs.items() if not which(prog)})
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"apt-get install {' '.join(missing)} failed: "
                               f"{proc.stderr.strip()[-500:]}")
    still = [prog for prog in programs if not which(prog)]
    if still:
        raise RuntimeError(f"still missing after apt-get install: {', '.join(still)}")
