# make demo   -- build, then train a BRNN-U-Net and a plain U-Net on two built-in tasks and compare them
#                (written outside the checkout: $(RUNS), default ~/brnnseg-runs)
# make test   -- create .venv, install torch 2.14.1 and the test tools, build, run the C++ and Python tests
# make bench  -- CPU benchmark against the plain-PyTorch ReNet block
# make wheel  -- CPU and CUDA wheels for the torch installed in .venv (dist/, with dist/index.html)
# make fuzz   -- the property-based hardening tests with 300 examples each
# make gpu-bundle -- the tree + the CUDA extension built for the GPU machines (torch 2.11, sm_90), one archive
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.14.1
STAMP  := $(VENV)/.deps-installed
# Demo runs (checkpoints, figures) go outside the repository.
RUNS   ?= $(HOME)/brnnseg-runs

.PHONY: all venv build test test-cpp test-py test-sim-asan test-torch-floor gpu-bundle demo bench bench-pytest triton-aot wheel wheel-check fuzz clean

all: build

$(STAMP): Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH) numpy pytest pytest-benchmark expecttest ninja cmake setuptools wheel \
	  tqdm matplotlib monai scipy pillow timm segmentation_models_pytorch hypothesis
	touch $@

venv: $(STAMP)

build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

# Cell math and kernels compiled without torch (and the SIMT simulator, when present), run by ctest.
test-cpp: $(STAMP)
	$(VENV)/bin/cmake -S . -B build/cmake -DBRNNSEG_BUILD_TORCH_LIBRARY=OFF -DCMAKE_BUILD_TYPE=Release > /dev/null
	$(VENV)/bin/cmake --build build/cmake -j 2
	cd build/cmake && ../../$(VENV)/bin/ctest --output-on-failure

test-py: build
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -q tests

# The simulator tests again through an AddressSanitizer + UBSan build of the simulator extension
# (libstdc++ preloaded too: ASan's __cxa_throw interceptor needs it loaded first; --capture=sys lets
# an ASan report reach the terminal).
# Under ASan every launch variant (kernel x cell x dtype x weight placement x pair), the odd-size
# and channels_last cases and every tensor-core case; the realistic-size repeats of the plain run are
# left to it (about half the ASan time).
ASAN_TESTS := not realistic_hidden_sizes and not some_gates_in_shared_memory
test-sim-asan: build
	BRNNSEG_SIM_ASAN=1 $(PY) setup.py -q build_ext --inplace
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0 BRNNSEG_SIM_MODULE=brnnseg_kernels._sim_asan PYTHONPATH=$(CURDIR) \
	  $(PY) -m pytest -q -p no:cacheprovider --capture=sys tests/test_sweep_sim.py tests/test_sweep_sim_mma.py \
	  -k "$(ASAN_TESTS)"

# Every host C++ translation unit compiled (-fsyntax-only) against the headers of setup.py's TORCH_FLOOR
# torch, downloaded from PyPI (not installed; cached in build/torch-floor/).
test-torch-floor: $(STAMP)
	$(PY) python/check_torch_floor.py

test: test-cpp test-torch-floor test-py test-sim-asan

demo: build
	PYTHONPATH=$(CURDIR) $(PY) -m brnnseg_kernels demo --out $(RUNS)

bench: build
	PYTHONPATH=$(CURDIR) $(PY) -m brnnseg_kernels bench --device cpu --csv benchmarks/results/cpu_renet.csv \
	  --json benchmarks/results/cpu_renet.json --plot benchmarks/results/cpu_renet.png

# The same comparisons as pytest-benchmark suites (benchmarks/bench_<op>.py), kept out of `make test`.
bench-pytest: build
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -q -p no:cacheprovider benchmarks --benchmark-group-by=param:shape

# The property-based tests (tests/test_hardening.py) with a larger example budget than CI's 20, drawn at
# random (a different sample each run; failures print the example to reproduce).
fuzz: build
	BRNNSEG_FUZZ_EXAMPLES=300 BRNNSEG_FUZZ_RANDOM=1 PYTHONPATH=$(CURDIR) $(PY) -m pytest -q -p no:cacheprovider \
	  tests/test_hardening.py -k fuzz

# Every Triton loss-kernel variant compiled for sm_80 and sm_90 (no GPU needed): registers and spills.
triton-aot: build
	PYTHONPATH=$(CURDIR) $(PY) -m brnnseg_kernels.losses._aot --set all

# Wheels for the torch and CUDA of .venv: the CPU wheel and the CUDA wheel (archs 8.0;9.0+PTX), with
# local versions (+cputorch2.14, +cu130torch2.14), and dist/index.html for pip --find-links.
wheel: $(STAMP)
	$(PY) python/build_wheels.py

# Each wheel installed into a fresh virtual environment and smoke-tested outside the source tree.
WHEEL_ENV := build/wheel-check
wheel-check: wheel
	set -e; for whl in dist/brnnseg_kernels-*+cpu*.whl dist/brnnseg_kernels-*+cu*.whl; do \
	  [ -f "$$whl" ] || continue; rm -rf $(WHEEL_ENV); $(PYTHON) -m venv $(WHEEL_ENV); \
	  $(WHEEL_ENV)/bin/python -m pip install -q $(TORCH) numpy "$$whl"; \
	  (cd /tmp && $(CURDIR)/$(WHEEL_ENV)/bin/python $(CURDIR)/python/wheel_smoke.py); done

# Build here, run on a GPU machine: the tree + the CUDA extension for torch 2.11.0 / sm_90 (the GPU
# machines'), no simulator, stripped, as one archive (python/gpu_bundle.py; about 4 minutes on 2 cores
# after a one-time torch download into build/gpu-bundle/).
GPU_TORCH ?= 2.11.0
GPU_ARCH  ?= 9.0
gpu-bundle:
	$(PYTHON) python/gpu_bundle.py --torch $(GPU_TORCH) --arch $(GPU_ARCH) --out build/gpu-bundle/brnnseg-gpu.tar.gz

clean:
	rm -rf build dist brnnseg_kernels/*.so brnnseg_kernels/_build_info.py
