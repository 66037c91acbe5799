# The README's two commands: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
ARGS ?=

.PHONY: setup test test-fast demo lock lint clean

setup:
	@bash scripts/setup.sh

# pytest exits 5 when it collected no tests; that is a failure of the suite, not a pass, but say so.
test: setup
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

test-fast: setup
	@$(PY) -m pytest -m "not slow and not e2e" $(PYTEST_ARGS)

demo: setup
	@$(VENV)/bin/studio demo $(ARGS)

lock:
	@bash scripts/lock.sh

clean:
	rm -rf $(VENV) .pytest_cache
