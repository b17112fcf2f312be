"""Rank worker: minor page faults per large MPI allreduce (rank 0 prints one number).

Open MPI's built-in choice for 2 ranks (Rabenseifner) maps a whole-message temporary fresh
on every call; the ring algorithm that toolkit/openmpi_coll_rules.conf selects mallocs half
the message, which glibc keeps on its heap after the first call (see that file)."""
import resource
import sys

import numpy as np
from mpi4py import MPI

numel, calls = int(sys.argv[1]), int(sys.argv[2])
data = np.ones(numel, dtype=np.float32)
comm = MPI.COMM_WORLD
comm.Allreduce(MPI.IN_PLACE, data)  # connections, first-touch of our own buffer
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(calls):
    comm.Allreduce(MPI.IN_PLACE, data)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls
assert data[0] == comm.size ** (calls + 1), data[0]  # the sums are right either way
if comm.rank == 0:
    print(f"faults_per_call={faults:.0f}")
