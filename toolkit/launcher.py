"""Command lines and environment for starting ranks with mpirun or horovodrun.

One place for the launcher options the toolkit relies on, shared by the tests, the
benchmarks and the SLURM scripts:
- Open MPI refuses to run as root without two confirmation variables;
- more ranks than cores needs --oversubscribe;
- Open MPI busy-polls by default, so Horovod's background thread would eat a compute core;
  mpi_yield_when_idle makes it yield (see the DaSGD spec for measured numbers).
"""
import os
import sys

MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_mpi_yield_when_idle": "1",
}


def launcher_env(extra=None):
    """os.environ plus what Open MPI needs here; `extra` wins over both."""
    env = dict(os.environ)
    env.update(MPI_ENV)
    # One compute thread per rank unless told otherwise: ranks share the node's cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def mpirun_argv(np, argv, *, oversubscribe=None, tcp=False, extra=()):
    """`mpirun -np N ... argv`. tcp=True forces the TCP transport over loopback
    (for the emulated slow interconnect); otherwise Open MPI picks shared memory."""
    if oversubscribe is None:
        oversubscribe = np > (os.cpu_count() or 1)
    cmd = ["mpirun", "-np", str(np), "--bind-to", "none", "--mca", "mpi_yield_when_idle", "1"]
    if oversubscribe:
        cmd.append("--oversubscribe")
    if tcp:
        cmd += ["--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo",
                "--mca", "oob_tcp_if_include", "lo"]
    cmd += list(extra)
    return cmd + list(argv)


def horovodrun_argv(np, argv, *, gloo=False, extra=()):
    """`horovodrun -np N -H localhost:N [--gloo --network-interface lo] argv`."""
    cmd = ["horovodrun", "-np", str(np), "-H", f"localhost:{np}"]
    if gloo:
        cmd += ["--gloo", "--network-interface", "lo"]
    cmd += list(extra)
    return cmd + list(argv)


def python_module(module, *args):
    """argv that runs `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *map(str, args)]
