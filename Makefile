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

# Two lanes, one after the other: the tests that start no engine, Ray cluster or stack (not
# `slow`/`e2e`, or marked `parallel`) on TEST_WORKERS pytest-xdist workers, then the other `slow`/`e2e`
# tests one at a time (two vLLM engines at once starve each other on 2 cores). pytest exits 5 when
# it collected no tests: one lane with none is fine (PYTEST_ARGS naming one module), both with none
# fails the run, saying so.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile

test: setup
	@$(PY) -m pytest -m "parallel or not (slow or e2e)" $(XDIST) $(PYTEST_ARGS); light=$$?; \
	$(PY) -m pytest -m "(slow or e2e) and not parallel" $(PYTEST_ARGS); heavy=$$?; \
	if [ $$light -eq 5 ] && [ $$heavy -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 5; fi; \
	for rc in $$light $$heavy; do if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi; done

test-fast: setup
	@$(PY) -m pytest -m "not slow and not e2e" $(XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; fi; exit $$rc

demo: setup
	@$(VENV)/bin/studio demo $(ARGS)

lock:
	@bash scripts/lock.sh

clean:
	rm -rf $(VENV) .pytest_cache
