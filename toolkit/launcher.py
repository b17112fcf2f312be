"""Command lines and environment for starting ranks with mpirun or horovodrun.

One place for the launcher options the toolkit relies on, shared by the tests, the
benchmarks and the SLURM scripts:
- Open MPI refuses to run as root without two confirmation variables;
- more ranks than cores needs --oversubscribe;
- Open MPI busy-polls by default, so Horovod's background thread would eat a compute core;
  mpi_yield_when_idle makes it yield (see the DaSGD spec for measured numbers);
- Open MPI 4.1 averages large messages between 2 ranks with an algorithm that page-faults a
  fresh temporary buffer in on every call; openmpi_coll_rules.conf selects the ring
  algorithm there instead (1 MiB to 64 MiB; measured numbers in that file). Defaults: a
  user's own OMPI_MCA_coll_tuned_* environment variables win.
"""
import os
import sys

MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_mpi_yield_when_idle": "1",
}
OPENMPI_COLL_RULES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "openmpi_coll_rules.conf")
# Set only when the user has not chosen collective tuning of their own.
MPI_DEFAULTS = {
    "OMPI_MCA_coll_tuned_use_dynamic_rules": "1",
    "OMPI_MCA_coll_tuned_dynamic_rules_filename": OPENMPI_COLL_RULES,
}


def launcher_env(extra=None):
    """os.environ plus what Open MPI needs here; `extra` wins over both."""
    env = dict(os.environ)
    env.update(MPI_ENV)
    # Only environment variables are seen: tuning in a parameter file or on mpirun's command
    # line is not (export OMPI_MCA_coll_tuned_use_dynamic_rules=0 to keep Open MPI's own).
    if not any(key.startswith("OMPI_MCA_coll_tuned_") for key in {**env, **(extra or {})}):
        env.update(MPI_DEFAULTS)
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
