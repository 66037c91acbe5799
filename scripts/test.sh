#!/usr/bin/env bash
# `make test`: the suite in two lanes that run at the same time (docs/decisions.md, 2026-12-07).
#   heavy  the `slow`/`e2e` tests that start a Ray cluster, an engine or a studio stack (not marked
#          `parallel`): one at a time in one pytest, in the foreground, its output live (two vLLM
#          engines at once starve each other on 2 cores);
#   light  everything else (and `parallel`) on TEST_WORKERS pytest-xdist workers (default 2), at
#          nice STUDIO_TEST_LIGHT_NICE (default 10), its output in a log printed when the heavy lane ends.
# The heavy lane is mostly one process importing or starting something while the other core waits
# (~25 % idle); the light lane, below it in priority, fills that time instead of running after it.
# STUDIO_TEST_LANES=serial runs the lanes one after the other (the light one first), as before.
# pytest exits 5 when it collected no tests: one lane with none is fine (arguments naming one
# module), both with none fails the run, saying so. Arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKERS=${TEST_WORKERS:-2}
LIGHT=(-m "parallel or not (slow or e2e)" -n "$WORKERS" --dist loadfile)
HEAVY=(-m "(slow or e2e) and not parallel")

if [[ ${STUDIO_TEST_LANES:-together} == serial ]]; then
  PYTEST_STUDIO_LANE=light "$PY" -m pytest "${LIGHT[@]}" "$@"; light=$?
  PYTEST_STUDIO_LANE=heavy "$PY" -m pytest "${HEAVY[@]}" "$@"; heavy=$?
else
  log=$(mktemp "${TMPDIR:-/tmp}/studio-test-light.XXXXXX.log")
  PYTEST_STUDIO_LANE=light nice -n "${STUDIO_TEST_LIGHT_NICE:-10}" "$PY" -m pytest "${LIGHT[@]}" "$@" \
    > "$log" 2>&1 &
  light_pid=$!
  # A background job ignores Ctrl-C: stop it with the heavy lane (pytest-xdist takes its workers along).
  trap 'kill -INT "$light_pid" 2>/dev/null; sleep 1; kill -TERM "$light_pid" 2>/dev/null' INT TERM
  echo "make test: the light lane runs beside this one (pytest-xdist, $WORKERS workers, nice" \
       "${STUDIO_TEST_LIGHT_NICE:-10}); its output is printed when this lane ends ($log)"
  PYTEST_STUDIO_LANE=heavy "$PY" -m pytest "${HEAVY[@]}" "$@"; heavy=$?
  wait "$light_pid"; light=$?
  trap - INT TERM
  echo
  echo "==================== the light lane (pytest-xdist, $WORKERS workers) ===================="
  cat "$log"
  rm -f "$log"
fi
echo "make test: light lane exit $light, heavy lane exit $heavy"
if [[ $light -eq 5 && $heavy -eq 5 ]]; then echo "make test: pytest collected no tests" >&2; exit 5; fi
for rc in $light $heavy; do
  if [[ $rc -ne 0 && $rc -ne 5 ]]; then exit "$rc"; fi
done
exit 0
