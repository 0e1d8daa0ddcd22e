# Two commands: `make demo` runs the embedded default, `make test` runs the tests before a commit.
# Each builds .venv from the pinned lock first (once; again when the lock changes).
# `make test-all` (what CI runs) adds the slow, multi-process and extras tiers (docs/testing.md).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
EXTRAS := .extras
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo demo-gemma test test-all venv benchmarks miniature clean extras-test tunix

$(STAMP): requirements/lock.txt setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# XLA:CPU allocates and frees large buffers every step; glibc hands them back to the kernel and
# faults them in again (docs/benchmarks.md#make-demo). tcmalloc keeps them: preloaded where Debian's
# libtcmalloc-minimal4 is installed (glibc's MALLOC_* settings measured no gain).
TCMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4))
ALLOCATOR := $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC))

# SWiRL from nothing on a CPU (docs/demo.md): a small policy, Stage 1, judge, filter, online RL, and
# base against trained on 500 held-out problems with 95% intervals.
demo: $(STAMP)
	$(ALLOCATOR) $(VENV)/bin/python experiments/miniature/run.py --gin_file=experiments/miniature/demo.gin

# The same pipeline on the embedded Gemma 3 270M (the machinery at full size; about 17 minutes here).
demo-gemma: $(STAMP)
	$(VENV)/bin/python -m swirl_jax.main --mode=pipeline --gin_file=gin/experiments/quickstart.gin

# The tiers are pytest markers (tests/conftest.py). Both print the 15 slowest tests. The 2 workers take
# whole files in collection order (tests/conftest.py puts the longest first), not xdist's default of
# files with the most tests first, which started the 13-minute learning test last.
PYTEST := $(VENV)/bin/python -m pytest -q --durations=15
XDIST := -n 2 --dist loadfile --no-loadscope-reorder
FAST := not slow and not multiprocess and not extras

# Before every commit: every module exercised, minutes on 2 cores. XLA's compiled programs are kept
# in .cache/jax-tests between runs (a cold run compiles everything; a warm one reuses it).
test: $(STAMP)
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.cache/jax-tests JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5 \
	    $(PYTEST) $(XDIST) -m "$(FAST)" tests

# Everything: the fast tier and the slow learning and end-to-end tests (2 workers), then the
# multi-process tests one at a time (each runs 2 processes on the 2 cores: beside another worker's
# test they ran 3 to 8 times slower, 1,051 s against 126 s alone for one of them), then the extras'
# tests with the extras installed, where a missing extra fails.
# The compilation cache as in `make test`: the tests that start processes (kill and resume, 2 hosts)
# pass their environment on, so a restarted process reuses the programs its first run compiled.
test-all: $(EXTRAS)/.installed
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.cache/jax-tests JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5 \
	    $(PYTEST) $(XDIST) -m "not extras and not multiprocess" tests
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.cache/jax-tests JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5 \
	    $(PYTEST) -m "multiprocess and not extras" tests
	$(MAKE) --no-print-directory extras-test

# The miniature reproduction of the paper's claims (docs/miniature.md): about 45 minutes on 2 cores.
miniature: $(STAMP)
	$(VENV)/bin/python experiments/miniature/run.py --gin_file=experiments/miniature/miniature.gin

benchmarks: $(STAMP)
	$(VENV)/bin/python benchmarks/forward_flops.py

# The optional extras (launch: xmanager; tpu-aot: libtpu), pinned, in .extras/ beside .venv (libtpu
# stays out of .venv so that plain runs never look for a TPU); then the tests that need them run.
$(EXTRAS)/.installed: requirements/launch.txt $(STAMP)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --target $(EXTRAS) \
	    -r requirements/launch.txt "libtpu==0.0.42.1"
	touch $@

extras-test: $(EXTRAS)/.installed
	SWIRL_JAX_TEST_EXTRAS=required PYTHONPATH=$(EXTRAS) $(PYTEST) -m extras tests

# tunix, a second baseline for benchmarks/sampler_throughput.py (--tunix), pinned, in .tunix/.
TUNIX := .tunix
$(TUNIX)/.installed: requirements/bench-tunix.txt $(STAMP)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --target $(TUNIX) \
	    -r requirements/bench-tunix.txt
	touch $@

tunix: $(TUNIX)/.installed

clean:
	rm -rf $(VENV) $(EXTRAS) $(TUNIX) .cache build *.egg-info
