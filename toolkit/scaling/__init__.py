"""Scaling studies: submit sweeps to SLURM (sweep), turn finished runs into a table and a
plot (report) and project measured numbers to many workers with an alpha-beta model
(projection). The command line is `python -m launch.scaling`."""
