#!/usr/bin/env bash
# `make test`: the suite in three lanes that run at the same time (docs/decisions.md, 2026-12-07).
#   engines  the `slow`/`e2e` tests that start a vLLM engine or a studio stack: one at a time in one
#            pytest, in the foreground, its output live (two engines at once starve each other on
#            2 cores: the engine lane is the only one that starts any);
#   training the `slow` tests marked `no_engine` (Ray clusters and training jobs, no engine): one at a
#            time in a second pytest at nice STUDIO_TEST_TRAINING_NICE (default 5);
#   light    everything else (and `parallel`) on TEST_WORKERS pytest-xdist workers (default 2) at
#            nice STUDIO_TEST_LIGHT_NICE (default 10).
# Each heavy module is mostly one process importing or starting something while the other core
# waits (the heavy tests in one lane left ~40 % of 2 cores idle); the lanes below it in priority fill
# that time instead of running after it. The other lanes' output is kept in logs, printed when the
# engine lane ends. STUDIO_TEST_LANES=serial runs the lanes one after the other (light, training,
# engines), as before. pytest exits 5 when it collected no tests: a lane with none is fine
# (arguments naming one module), all with none fails the run, saying so. Arguments go to every lane.
set -uo pipefail
cd "$(dirname "$0")/.."
# Hundreds of processes (pytest and its xdist workers, Ray workers, engines, CLI runs) import the
# project's modules: with PYTHONDONTWRITEBYTECODE set (some machines set it) each compiled them from
# source again, ~6 CPU-s of every pytest's collection. The caches go to __pycache__ (git-ignored).
unset PYTHONDONTWRITEBYTECODE
PY=${PY:-.venv/bin/python}
WORKERS=${TEST_WORKERS:-2}
LIGHT=(-m "parallel or not (slow or e2e)" -n "$WORKERS" --dist loadfile)
TRAINING=(-m "(slow or e2e) and not parallel and no_engine")
ENGINES=(-m "(slow or e2e) and not parallel and not no_engine")

if [[ ${STUDIO_TEST_LANES:-together} == serial ]]; then
  PYTEST_STUDIO_LANE=light "$PY" -m pytest "${LIGHT[@]}" "$@"; light=$?
  PYTEST_STUDIO_LANE=training "$PY" -m pytest "${TRAINING[@]}" "$@"; training=$?
  PYTEST_STUDIO_LANE=engines "$PY" -m pytest "${ENGINES[@]}" "$@"; engines=$?
else
  logs=$(mktemp -d "${TMPDIR:-/tmp}/studio-test-lanes.XXXXXX")
  PYTEST_STUDIO_LANE=light nice -n "${STUDIO_TEST_LIGHT_NICE:-10}" "$PY" -m pytest "${LIGHT[@]}" "$@" \
    > "$logs/light.log" 2>&1 &
  light_pid=$!
  PYTEST_STUDIO_LANE=training nice -n "${STUDIO_TEST_TRAINING_NICE:-5}" "$PY" -m pytest "${TRAINING[@]}" "$@" \
    > "$logs/training.log" 2>&1 &
  training_pid=$!
  # Background jobs ignore Ctrl-C: stop them with the engine lane (pytest-xdist takes its workers
  # along; the training lane's fixtures stop their Ray heads on the interrupt).
  stop_others() {
    kill -INT "$light_pid" "$training_pid" 2>/dev/null
    sleep 5
    kill -TERM "$light_pid" "$training_pid" 2>/dev/null
  }
  trap stop_others INT TERM
  echo "make test: the light lane (pytest-xdist, $WORKERS workers) and the training lane run beside" \
       "this one, the engine lane; their output is printed when it ends ($logs)"
  PYTEST_STUDIO_LANE=engines "$PY" -m pytest "${ENGINES[@]}" "$@"; engines=$?
  wait "$training_pid"; training=$?
  wait "$light_pid"; light=$?
  trap - INT TERM
  for lane in training light; do
    echo
    echo "==================== the $lane lane ===================="
    cat "$logs/$lane.log"
  done
  rm -rf "$logs"
fi
echo "make test: exit status light $light, training $training, engines $engines"
if [[ $light -eq 5 && $training -eq 5 && $engines -eq 5 ]]; then
  echo "make test: pytest collected no tests" >&2
  exit 5
fi
for rc in $light $training $engines; do
  if [[ $rc -ne 0 && $rc -ne 5 ]]; then exit "$rc"; fi
done
exit 0
