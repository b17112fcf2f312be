"""The toolkit's Open MPI policy, and command lines for starting ranks with mpirun or horovodrun.

The policy is written here once; the Makefile and slurm/train.sbatch apply it through
`python -m toolkit.mpi_policy env --ntasks N`, the tests and benchmarks through launcher_env():
- Open MPI busy-polls by default, so Horovod's background thread would eat a compute core;
  mpi_yield_when_idle makes it yield (docs/dasgd.md has the measured numbers);
- Open MPI 4.1 averages large messages between 2 ranks with an algorithm that page-faults a
  fresh temporary buffer in on every call; openmpi_coll_rules.conf selects the ring
  algorithm there instead (1 MiB to 64 MiB; measured numbers in that file). The rules only
  concern 2-rank communicators: for a job known to have another size they are left out, so
  that a site's own tuning stays in charge. A user's own OMPI_MCA_coll_tuned_* variables
  always win;
- Open MPI refuses to run as root without two confirmation variables (containers, test
  machines): set only when running as root;
- more ranks than cores needs --oversubscribe (mpirun_argv);
- on SIGTERM or SIGINT mpirun sends its ranks SIGCONT, then SIGTERM after
  odls_base_sigkill_timeout seconds and SIGKILL after as many again; Open MPI's 1 s leaves
  no time for the checkpoint a stop signal asks for, so the policy gives them 10 s each
  (docs/faults.md); a value of the user's own wins.
"""
import argparse
import os
import shlex
import sys

YIELD_WHEN_IDLE = {"OMPI_MCA_mpi_yield_when_idle": "1"}
STOP_GRACE = {"OMPI_MCA_odls_base_sigkill_timeout": "10"}
RUN_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
OPENMPI_COLL_RULES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "openmpi_coll_rules.conf")
MPI_DEFAULTS = {
    "OMPI_MCA_coll_tuned_use_dynamic_rules": "1",
    "OMPI_MCA_coll_tuned_dynamic_rules_filename": OPENMPI_COLL_RULES,
}


def openmpi_env(env=os.environ, ntasks=None, is_root=None):
    """The variables the policy adds to `env` for a job of `ntasks` ranks (None: unknown).
    Only environment variables are seen: tuning in a parameter file or on mpirun's command
    line is not (export OMPI_MCA_coll_tuned_use_dynamic_rules=0 to keep Open MPI's own)."""
    wanted = dict(YIELD_WHEN_IDLE)
    if not any(key in env for key in STOP_GRACE):
        wanted.update(STOP_GRACE)
    if is_root if is_root is not None else os.geteuid() == 0:
        wanted.update(RUN_AS_ROOT)
    user_tunes = any(key.startswith("OMPI_MCA_coll_tuned_") for key in env)
    if not user_tunes and ntasks in (None, 2):
        wanted.update(MPI_DEFAULTS)
    return wanted


def launcher_env(extra=None):
    """os.environ plus the Open MPI policy; `extra` wins over both."""
    env = dict(os.environ)
    env.update(openmpi_env({**env, **(extra or {})}))
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


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m toolkit.mpi_policy",
        description="Print the toolkit's Open MPI settings as shell `export` lines, for "
                    "`eval \"$(python -m toolkit.mpi_policy env --ntasks N)\"` in job scripts.")
    p.add_argument("what", choices=["env"])
    p.add_argument("--ntasks", type=int, default=None,
                   help="ranks in the job (the collective rules are set for 2 or unknown)")
    args = p.parse_args(argv)
    for key, value in sorted(openmpi_env(os.environ, args.ntasks).items()):
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
