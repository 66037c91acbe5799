#!/usr/bin/env bash
# `make test`: the suite in two lanes that run at the same time (docs/decisions.md, 2026-12-07).
#   heavy  the `slow`/`e2e` tests that start a Ray cluster, an engine or a studio stack (not marked
#          `parallel`): one at a time in one pytest, in the foreground, its output live (two vLLM
#          engines at once starve each other on 2 cores);
#   light  everything else (and `parallel`) on TEST_WORKERS pytest-xdist workers (default 1 here) at
#          nice STUDIO_TEST_LIGHT_NICE (default 10), its output in a log printed when the heavy lane ends.
# The heavy lane is mostly one process importing or starting something while the other core waits
# (~40 % of 2 cores idle); the light lane fills that time instead of running after it. One light
# worker, not two: measured 2026-12-07, the heavy lane with a second heavy lane and two light workers
# beside it ran at load 12-24 and the demo's stack lost its DPO job three times (Ray "Failed to connect
# to GCS within 60 seconds"); nice does not hold back tests that start their own sessions (the
# kernel's autogroups share the CPU between sessions first).
# STUDIO_TEST_LANES=serial runs the lanes one after the other (light first, TEST_WORKERS default 2).
# pytest exits 5 when it collected no tests: one lane with none is fine (arguments naming one
# module), both with none fails the run, saying so. Arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
# Hundreds of processes (pytest and its xdist workers, Ray workers, engines, CLI runs) import the
# project's modules: with PYTHONDONTWRITEBYTECODE set (some machines set it) each compiled them from
# source again, ~6 CPU-s of every pytest's collection. The caches go to __pycache__ (git-ignored).
unset PYTHONDONTWRITEBYTECODE
PY=${PY:-.venv/bin/python}
HEAVY=(-m "(slow or e2e) and not parallel")
LIGHT=(-m "parallel or not (slow or e2e)" --dist loadfile)

if [[ ${STUDIO_TEST_LANES:-together} == serial ]]; then
  PYTEST_STUDIO_LANE=light "$PY" -m pytest "${LIGHT[@]}" -n "${TEST_WORKERS:-2}" "$@"; light=$?
  PYTEST_STUDIO_LANE=heavy "$PY" -m pytest "${HEAVY[@]}" "$@"; heavy=$?
else
  workers=${TEST_WORKERS:-1}
  log=$(mktemp "${TMPDIR:-/tmp}/studio-test-light.XXXXXX.log")
  PYTEST_STUDIO_LANE=light nice -n "${STUDIO_TEST_LIGHT_NICE:-10}" "$PY" -m pytest "${LIGHT[@]}" -n "$workers" "$@" \
    > "$log" 2>&1 &
  light_pid=$!
  # A background job ignores Ctrl-C: stop it with the heavy lane (pytest-xdist takes its workers along).
  trap 'kill -INT "$light_pid" 2>/dev/null; sleep 2; kill -TERM "$light_pid" 2>/dev/null' INT TERM
  echo "make test: the light lane (pytest-xdist, $workers worker(s)) runs beside this one; its output" \
       "is printed when this lane ends ($log)"
  PYTEST_STUDIO_LANE=heavy "$PY" -m pytest "${HEAVY[@]}" "$@"; heavy=$?
  wait "$light_pid"; light=$?
  trap - INT TERM
  echo
  echo "==================== the light lane (pytest-xdist, $workers worker(s)) ===================="
  cat "$log"
  rm -f "$log"
fi
echo "make test: exit status light lane $light, heavy lane $heavy"
if [[ $light -eq 5 && $heavy -eq 5 ]]; then echo "make test: pytest collected no tests" >&2; exit 5; fi
for rc in $light $heavy; do
  if [[ $rc -ne 0 && $rc -ne 5 ]]; then exit "$rc"; fi
done
exit 0
