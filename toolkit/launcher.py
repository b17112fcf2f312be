"""Former name of toolkit.mpi_policy, kept so that job scripts running
`python -m toolkit.launcher env ...` keep working. Nothing imports this module."""
import sys

if __name__ == "__main__":
    print("note: toolkit.launcher is now toolkit.mpi_policy (python -m toolkit.mpi_policy ...)",
          file=sys.stderr)
    from toolkit.mpi_policy import main
    sys.exit(main(sys.argv[1:]))
