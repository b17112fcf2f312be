"""Start real multi-process jobs from tests (mpirun / horovodrun) and check they succeeded."""
import os
import subprocess
import sys

from toolkit.mpi_policy import horovodrun_argv, launcher_env, mpirun_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_ranks(np, argv, *, launcher="mpirun", timeout=300, env=None, check=True, cwd=REPO):
    """Run `argv` (a list, e.g. [sys.executable, "tests/workers/x.py"]) on `np` ranks.

    launcher: "mpirun" | "horovodrun" | "horovodrun-gloo". Returns the CompletedProcess;
    with check=True a non-zero exit fails the test showing the job's output.
    """
    if launcher == "mpirun":
        # The issue's `mpirun -np 3 --oversubscribe`: explicit, whatever this machine's cores.
        cmd = mpirun_argv(np, argv, oversubscribe=True if np >= 3 else None)
    elif launcher in ("horovodrun", "horovodrun-gloo"):
        cmd = horovodrun_argv(np, argv, gloo=launcher.endswith("gloo"))
    else:
        raise ValueError(f"unknown launcher {launcher!r}")
    full_env = launcher_env(env)
    # Make the venv's launchers (horovodrun) and the repo importable in every rank.
    full_env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + full_env.get("PATH", "")
    full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n"
                             f"--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def py(script, *args):
    """argv for running a script from tests/workers with this interpreter."""
    return [sys.executable, os.path.join(REPO, "tests", "workers", script), *map(str, args)]


def can_make_namespace():
    """True when this process may create a network namespace (root with iproute2): the
    emulated slow link of the communication benchmark needs one."""
    name = f"tkprobe{os.getpid()}"
    try:
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False
    if made:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return made
