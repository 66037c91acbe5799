# The README's two commands: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
ARGS ?=

.PHONY: setup test test-fast demo lock lint clean

# GPU=1: the CUDA environment from requirements/lock-gpu.txt (GPU=0 forces CPU; unset: nvidia-smi decides);
# SGLANG=1 (with GPU=1): also .venv-sglang from requirements/lock-gpu-sglang.txt.
setup:
	@STUDIO_SETUP_GPU=$(GPU) STUDIO_SETUP_SGLANG=$(SGLANG) bash scripts/setup.sh

# Two lanes at once (scripts/test.sh): the `slow`/`e2e` tests that start an engine, a Ray cluster or a
# stack one at a time (two vLLM engines at once starve each other on 2 cores), and beside them, at a
# lower priority, the rest (not `slow`/`e2e`, or marked `parallel`) on TEST_WORKERS pytest-xdist
# workers (1 beside the heavy lane; 2 for test-fast and STUDIO_TEST_LANES=serial, which runs the lanes
# one after the other; STUDIO_TEST_LANES=three adds the opt-in training lane). pytest exits 5 when it
# collected no tests: a lane with none is fine (PYTEST_ARGS naming one module), all with none fails.
TEST_WORKERS ?=

test: setup
	@TEST_WORKERS=$(TEST_WORKERS) bash scripts/test.sh $(PYTEST_ARGS)

test-fast: setup
	@$(PY) -m pytest -m "not slow and not e2e" -n $(or $(TEST_WORKERS),2) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; fi; exit $$rc

demo: setup
	@$(VENV)/bin/studio demo $(ARGS)

lock:
	@bash scripts/lock.sh

clean:
	rm -rf $(VENV) .pytest_cache
