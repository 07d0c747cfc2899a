# Quick start: `make test` and `make bench` on a fresh clone. Both create .venv, install torch
# (the CPU wheel torch==2.13.0 when no torch is importable), build the package, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.9.0

.PHONY: test bench build dev clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	@touch $@

# torch first, alone: anything that depends on it must find it installed rather than pull a CUDA build.
$(VENV)/.torch: $(VENV)/.created
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	@$(PY) -c "import triton" 2>/dev/null || $(PIP) install "$(TRITON_SPEC)"
	$(PIP) install setuptools wheel ninja numpy
	@touch $@

$(VENV)/.test-deps: $(VENV)/.torch
	$(PIP) install pytest pytest-xdist scikit-learn
	@touch $@

$(VENV)/.bench-deps: $(VENV)/.torch
	$(PIP) install pytest pytest-benchmark matplotlib
	# peers, never hard dependencies
	$(PIP) install --no-deps spikingjelly==2.0.0 loguru || echo "spikingjelly not installed: its rows are skipped"
	@touch $@

# Rebuilt whenever a C++/CUDA source changes.
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null) setup.py
$(VENV)/.built: $(VENV)/.torch $(CSRC)
	MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install --no-build-isolation --no-deps -e .
	@touch $@

build: $(VENV)/.built

test: $(VENV)/.test-deps $(VENV)/.built
	$(PY) -m pytest tests -n $${PYTEST_WORKERS:-2} -q

bench: $(VENV)/.bench-deps $(VENV)/.built
	$(PY) benchmarks/run.py

clean:
	rm -rf build *.egg-info snn_fast/_C*.so $(VENV)
