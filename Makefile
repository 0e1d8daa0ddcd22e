# Two commands: `make demo` runs the embedded default, `make test` runs the tests.
# Each builds .venv from the pinned lock first (once; again when the lock changes).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo demo-gemma test venv benchmarks miniature clean extras-test tunix

$(STAMP): requirements/lock.txt setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# SWiRL from nothing on a CPU (docs/demo.md): a small policy, Stage 1, judge, filter, online RL, and
# base against trained on 500 held-out problems with 95% intervals.
demo: $(STAMP)
	$(VENV)/bin/python experiments/miniature/run.py --gin_file=experiments/miniature/demo.gin

# The same pipeline on the embedded Gemma 3 270M (the machinery at full size; about 17 minutes here).
demo-gemma: $(STAMP)
	$(VENV)/bin/python -m swirl_jax.main --mode=pipeline --gin_file=gin/experiments/quickstart.gin

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile tests

# The miniature reproduction of the paper's claims (docs/miniature.md): about 45 minutes on 2 cores.
miniature: $(STAMP)
	$(VENV)/bin/python experiments/miniature/run.py --gin_file=experiments/miniature/miniature.gin

benchmarks: $(STAMP)
	$(VENV)/bin/python benchmarks/forward_flops.py

# The optional extras (launch: xmanager; tpu-aot: libtpu), pinned, in .extras/ beside .venv (libtpu
# stays out of .venv so that plain runs never look for a TPU); then the tests that need them run.
EXTRAS := .extras
$(EXTRAS)/.installed: requirements/launch.txt $(STAMP)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --target $(EXTRAS) \
	    -r requirements/launch.txt "libtpu==0.0.42.1"
	touch $@

extras-test: $(EXTRAS)/.installed
	PYTHONPATH=$(EXTRAS) $(VENV)/bin/python -m pytest -q tests/test_launch.py tests/test_aot_tpu.py

# tunix, a second baseline for benchmarks/sampler_throughput.py (--tunix), pinned, in .tunix/.
TUNIX := .tunix
$(TUNIX)/.installed: requirements/bench-tunix.txt $(STAMP)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --target $(TUNIX) \
	    -r requirements/bench-tunix.txt
	touch $@

tunix: $(TUNIX)/.installed

clean:
	rm -rf $(VENV) $(EXTRAS) $(TUNIX) build *.egg-info
