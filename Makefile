# Two commands do all set-up: `make run` (the main job) and `make test` (the whole suite).
# Both install whatever is missing first (scripts/install.sh is idempotent and stamped).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Open MPI busy-polls by default; yielding keeps Horovod's background thread off the compute cores.
export OMPI_MCA_mpi_yield_when_idle := 1
# Ring allreduce for large 2-rank messages (toolkit/openmpi_coll_rules.conf says why), unless
# the environment already tunes Open MPI's collectives (any OMPI_MCA_coll_tuned_* variable).
ifeq ($(filter OMPI_MCA_coll_tuned_%,$(.VARIABLES)),)
export OMPI_MCA_coll_tuned_use_dynamic_rules := 1
export OMPI_MCA_coll_tuned_dynamic_rules_filename := $(CURDIR)/toolkit/openmpi_coll_rules.conf
endif
NP ?= 2
RUN_ARGS ?=

.PHONY: install run test bench clean
install:
	@bash scripts/install.sh

run: install
	horovodrun -np $(NP) -H localhost:$(NP) $(PY) -m launch.train $(RUN_ARGS)

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m launch.bench_layer --json runs/bench_layer.json
	$(PY) -m launch.bench_comm --json runs/bench_comm.json

clean:
	rm -rf build *.egg-info toolkit/_C*.so
