# `make test` and `make demo` set everything up on a fresh machine: they create .venv if missing and
# install nnsdm with its test extras into it.
#
# torch: if .venv has no torch yet, TORCH_SPEC is installed first (on the project's CI machines that is
# the CPU build from local disk). If a torch is already there (a GPU user's own CUDA build, installed
# with `.venv/bin/pip install torch ...` before `make`), it is kept: its exact version is written into
# the constraints used for every later install, so nothing can replace it.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nnsdm-installed
PIP_CONSTRAINTS := $(VENV)/torch-constraints.txt

.PHONY: install test demo bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(PIP_CONSTRAINTS)
	@echo "keeping $$(cat $(PIP_CONSTRAINTS))"
	$(PY) -m pip install --quiet -c $(PIP_CONSTRAINTS) -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/nnsdm demo

# benchmarks/slurm_predict.py needs a SLURM cluster: a one-node one is started for it where this machine
# allows (root), and stopped again afterwards; elsewhere that benchmark prints why it skips.
bench: $(STAMP)
	@started=""; if ! scripts/slurm-cluster.sh status >/dev/null 2>&1; then \
	  scripts/slurm-cluster.sh start && started=1 || echo "no local SLURM cluster"; fi; \
	failed=""; for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || failed="$$failed $$f"; done; \
	if [ -n "$$started" ]; then scripts/slurm-cluster.sh stop; fi; \
	if [ -n "$$failed" ]; then echo "goals not met:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) nnsdm_demo nnsdm_workspace
