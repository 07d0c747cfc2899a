# Quick start: `make test` and `make bench` on a fresh clone. Both create .venv, install torch
# (torch==2.14.1, the newest release the package index serves, when no torch is importable; it comes
# as its CUDA build, ~5.5 GB with its CUDA libraries, and brings the Triton it pins, 3.8), build the
# package, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# --no-cache-dir: the CUDA torch wheels would otherwise sit twice on CI's disk (cache and venv).
PIP    := $(PY) -m pip --disable-pip-version-check --no-cache-dir -q
TORCH_SPEC ?= torch==2.14.1
TRITON_SPEC ?= triton==3.8.0
# The CUDA kernels are built only where a GPU can run them: without one, compiling them for two
# architectures costs most of `make test`'s time on 2 cores, and `make compat` compiles them anyway
# (against the oldest torch's headers). NO_CUDA=0 forces the CUDA build, NO_CUDA=1 skips it.
NO_CUDA ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 0 || echo 1)

.PHONY: test bench build dev clean compat lint

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
	$(PIP) install pytest pytest-xdist hypothesis scikit-learn matplotlib tqdm h5py
	@# peers as oracles (convert, NIR): --no-deps, never hard dependencies; their tests skip when absent
	$(PIP) install --no-deps spikingjelly==2.0.0 loguru nir==1.0.8 nirtorch==2.6 snntorch==1.0.0 \
	  || echo "peers not installed: their tests are skipped"
	$(PIP) install --no-deps norse==1.1.0 || echo "norse not installed (an sdist): its tests are skipped"
	$(PIP) install --no-deps sinabs==3.1.3 pbr || echo "sinabs not installed: its tests are skipped"
	@touch $@

$(VENV)/.bench-deps: $(VENV)/.torch
	$(PIP) install pytest pytest-benchmark matplotlib
	# peers, never hard dependencies
	$(PIP) install tqdm h5py
	$(PIP) install --no-deps spikingjelly==2.0.0 loguru nir==1.0.8 nirtorch==2.6 snntorch==1.0.0 \
	  || echo "spikingjelly/snntorch not installed: their rows are skipped"
	@# Norse 1.1 imports nir, nirtorch and h5py (above)
	$(PIP) install --no-deps norse==1.1.0 || echo "norse not installed: its rows are skipped"
	$(PIP) install --no-deps sinabs==3.1.3 pbr || echo "sinabs not installed: its rows are skipped"
	@touch $@

# Rebuilt whenever a C++/CUDA source changes.
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null) setup.py
$(VENV)/.built: $(VENV)/.torch $(CSRC)
	SNN_FAST_NO_CUDA=$(NO_CUDA) MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install --no-build-isolation --no-deps -e .
	@touch $@

build: $(VENV)/.built

# Lint: ruff with pyproject.toml's rules; a finding fails (CI runs this before the tests).
RUFF_SPEC ?= ruff==0.17.6
$(VENV)/.lint-deps: $(VENV)/.created
	$(PIP) install "$(RUFF_SPEC)"
	@touch $@

lint: $(VENV)/.lint-deps
	$(VENV)/bin/ruff check .

# The nvcc compiles of tests/test_cuda_compile.py (none reads torch) are kept in build/nvcc-test-cache
# under a hash of all they read, so `make compat` after `make test` reuses their reports.
NVCC_TEST_CACHE := $(CURDIR)/build/nvcc-test-cache

test: $(VENV)/.test-deps $(VENV)/.built
	SNN_FAST_NVCC_CACHE=$(NVCC_TEST_CACHE) $(PY) -m pytest tests -n $${PYTEST_WORKERS:-2} -q

# FULL=1: the long sizes too (CPU: W2 at n = 2048); the default run finishes in about 5 minutes on 2 cores.
FULL ?= 0
bench: $(VENV)/.bench-deps $(VENV)/.built
	SNN_FAST_BENCH_FULL=$(FULL) $(PY) benchmarks/run.py

# The oldest supported versions (those of the GPU image: torch 2.11 + triton 3.6), in a second venv.
# torch 2.11 exists on the package index only as its CUDA build (~3.5 GB with its CUDA libraries):
# that also lets the CUDA kernels compile against torch 2.11's headers here, for sm_90 (no GPU needed
# to build). The extension is built out of tree into .compat/ so the main .venv's build is untouched;
# the tests import the package from a copy in .compat/pkg. Runs the whole suite (GPU tests skip).
# SNN_FAST_CPU_CLONES=0 (setup.py): the CPU hot loops built once, for baseline x86-64, not as three
# target clones: ~40 % less of the CPU kernels' compile, and the baseline loops, which a CPU with
# AVX2 or AVX-512 never runs in `make test`, are the ones the suite runs here.
COMPAT_VENV   := .venv-compat
COMPAT_PY     := $(COMPAT_VENV)/bin/python
COMPAT_PIP    := $(COMPAT_PY) -m pip --disable-pip-version-check --no-cache-dir -q
COMPAT_TORCH  ?= torch==2.11.0
COMPAT_TRITON ?= triton==3.6.0

$(COMPAT_VENV)/.deps:
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PIP) install "$(COMPAT_TORCH)" "$(COMPAT_TRITON)"
	@# setuptools >= 77 reads pyproject's SPDX license; torch 2.11 asks for < 82; the venv's bundled 65 is older
	@# numpy < 2.4: triton 3.6's interpreter (CPU tests) int()s one-element arrays, an error from numpy 2.4 on
	$(COMPAT_PIP) install --upgrade "setuptools>=77,<82" wheel ninja "numpy<2.4" \
	  pytest pytest-xdist hypothesis scikit-learn matplotlib
	@touch $@

compat: $(COMPAT_VENV)/.deps
	rm -rf .compat/pkg .compat/lib
	SNN_FAST_CPU_CLONES=0 TORCH_CUDA_ARCH_LIST=$${COMPAT_CUDA_ARCH:-9.0} MAX_JOBS=$${MAX_JOBS:-2} $(COMPAT_PY) setup.py -q build_ext \
	  --build-lib .compat/lib --build-temp .compat/build
	@# csrc beside the package: a user's surrogate is compiled against its headers (native_surrogate.py)
	mkdir -p .compat/pkg && cp -r snn_fast csrc .compat/pkg/ && rm -f .compat/pkg/snn_fast/_C*.so
	cp .compat/lib/snn_fast/_C*.so .compat/pkg/snn_fast/
	$(COMPAT_PY) -c "import torch, triton; print('compat: torch', torch.__version__, 'triton', triton.__version__)"
	cd tests && PYTHONPATH=$(CURDIR)/.compat/pkg ../$(COMPAT_PY) -c \
	  "import snn_fast, sys; assert snn_fast.HAS_C and '.compat' in snn_fast.__file__, snn_fast.__file__"
	@# bin/pytest, not `python -m pytest`: -m would put the repository root (and its own build of _C) first
	SNN_FAST_NVCC_CACHE=$(NVCC_TEST_CACHE) PYTHONPATH=$(CURDIR)/.compat/pkg $(COMPAT_VENV)/bin/pytest tests -n $${PYTEST_WORKERS:-2} -q

clean:
	rm -rf build *.egg-info snn_fast/_C*.so $(VENV) .compat $(COMPAT_VENV)
