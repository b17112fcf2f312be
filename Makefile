# Two commands do all set-up: `make run` (the main job) and `make test` (the whole suite).
# Both install whatever is missing first (scripts/install.sh is idempotent and stamped).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# The toolkit's Open MPI policy (toolkit/mpi_policy.py) for the jobs make starts.
MPI_POLICY = eval "$$($(PY) -m toolkit.mpi_policy env $(if $(1),--ntasks $(1)))"
NP ?= 2
RUN_ARGS ?=

.PHONY: install run test test-multinode test-load bench clean cuda-build
install:
	@bash scripts/install.sh

run: install
	$(call MPI_POLICY,$(NP)) && horovodrun -np $(NP) -H localhost:$(NP) $(PY) -m launch.train $(RUN_ARGS)

test: install
	$(call MPI_POLICY,) && $(PY) -m pytest -q tests

# Ranks on an emulated 2-node cluster (root; namespaces, sshd and slurmd per node; several
# minutes, so not part of `test`, which skips them): docs/multinode.md.
test-multinode: install
	$(call MPI_POLICY,) && $(PY) -m pytest -q -m multinode tests/test_multinode.py

# Every fault test file under a background load of 2 busy processes per core (root for the
# disk and SLURM cases; most of an hour on 2 cores, so `test` runs only the signal cases and
# one rank failure under load): docs/faults.md, "Under load".
# The record (outcomes, load during the run, provenance) for docs/results/faults_under_load.md.
LOAD_RECORD ?= runs/faults_under_load.json
FAULT_TESTS = tests/test_faults_disk.py tests/test_faults_ranks.py tests/test_faults_signals.py \
	tests/test_slurm.py tests/test_train_faults.py tests/test_dasgd_resume_stall.py
test-load: install
	$(call MPI_POLICY,) && $(PY) -m pytest -q --load 2 --load-record $(LOAD_RECORD) $(FAULT_TESTS)

bench: install
	$(PY) -m launch.bench_layer --json runs/bench_layer.json
	$(PY) -m launch.bench_comm --json runs/bench_comm.json

# toolkit._C built with CUDA in .venv-cuda and build/cuda-tree, beside the CPU stack, and checked
# without a GPU (scripts/cuda_build.sh; downloads ~4 GB the first time; not part of `test`).
cuda-build:
	bash scripts/cuda_build.sh

clean:
	rm -rf build *.egg-info toolkit/_C*.so
