#!/usr/bin/env bash
# `make test`: the suite in three lanes that run at the same time (docs/decisions.md, 2026-12-07/08).
#   heavy     the `slow`/`e2e` tests that start a vLLM engine or a studio stack (not marked `parallel`
#             or `no_engine`): one at a time in one pytest, in the foreground, its output live (two
#             engines at once starve each other on 2 cores: this is the only lane that starts any);
#   training  the `slow` tests marked `no_engine` (Ray clusters and training jobs, never an engine):
#             one at a time in a second pytest;
#   light     everything else (and `parallel`) on TEST_WORKERS pytest-xdist workers (default 1).
# The heavy lane is mostly one process importing or starting something while the other core waits
# (~40 % of 2 cores idle); the two background lanes fill that time. They run below it in priority:
# each in a session of its own, every session they start (Ray heads, drivers, CLI runs) set to nice
# STUDIO_TEST_BACKGROUND_NICE (default 19) by tests/lanes.py — with the kernel's autogroups the CPU is
# shared between sessions first, and a plain `nice` did not hold back the sessions tests start (a
# training lane at nice 5 starved the heavy lane's Ray control plane, 2026-12-07). Their output is
# kept in logs, printed when the heavy lane ends.
# STUDIO_TEST_LANES=serial runs the lanes one after the other (light on TEST_WORKERS default 2,
# training, heavy). pytest exits 5 when it collected no tests: a lane with none is fine (arguments
# naming one module), all with none fails the run, saying so. Arguments go to every lane.
set -uo pipefail
cd "$(dirname "$0")/.."
# Hundreds of processes (pytest and its xdist workers, Ray workers, engines, CLI runs) import the
# project's modules: with PYTHONDONTWRITEBYTECODE set (some machines set it) each compiled them from
# source again, ~6 CPU-s of every pytest's collection. The caches go to __pycache__ (git-ignored).
unset PYTHONDONTWRITEBYTECODE
PY=${PY:-.venv/bin/python}
HEAVY=(-m "(slow or e2e) and not parallel and not no_engine")
TRAINING=(-m "(slow or e2e) and not parallel and no_engine")
LIGHT=(-m "parallel or not (slow or e2e)" --dist loadfile)
LANES=(light training heavy)
declare -A rc

if [[ ${STUDIO_TEST_LANES:-together} == serial ]]; then
  PYTEST_STUDIO_LANE=light "$PY" -m pytest "${LIGHT[@]}" -n "${TEST_WORKERS:-2}" "$@"; rc[light]=$?
  PYTEST_STUDIO_LANE=training "$PY" -m pytest "${TRAINING[@]}" "$@"; rc[training]=$?
  PYTEST_STUDIO_LANE=heavy "$PY" -m pytest "${HEAVY[@]}" "$@"; rc[heavy]=$?
else
  workers=${TEST_WORKERS:-1}
  nice=${STUDIO_TEST_BACKGROUND_NICE:-19}
  logs=$(mktemp -d "${TMPDIR:-/tmp}/studio-test-lanes.XXXXXX")
  declare -A pid
  # setsid: each background lane in a session of its own (tests/lanes.py sets it and the sessions it
  # starts to $nice; the heavy lane's session, this script's, is left alone).
  PYTEST_STUDIO_LANE=light setsid nice -n "$nice" "$PY" -m pytest "${LIGHT[@]}" -n "$workers" "$@" \
    > "$logs/light.log" 2>&1 &
  pid[light]=$!
  PYTEST_STUDIO_LANE=training setsid nice -n "$nice" "$PY" -m pytest "${TRAINING[@]}" "$@" \
    > "$logs/training.log" 2>&1 &
  pid[training]=$!
  "$PY" -m tests.lanes "$nice" light training &
  watcher=$!
  # The background lanes are not in the terminal's session: Ctrl-C reaches them through this trap
  # (each lane's process group: pytest and its xdist workers; fixtures stop the Ray heads they started).
  stop_background() {
    kill -INT -- "-${pid[light]}" "-${pid[training]}" 2>/dev/null
    sleep 5
    kill -TERM -- "-${pid[light]}" "-${pid[training]}" 2>/dev/null
  }
  trap stop_background INT TERM
  echo "make test: the light lane (pytest-xdist, $workers worker(s)) and the training lane run beside" \
       "this one at session nice $nice; their output is printed when this lane ends ($logs)"
  PYTEST_STUDIO_LANE=heavy "$PY" -m pytest "${HEAVY[@]}" "$@"; rc[heavy]=$?
  wait "${pid[light]}"; rc[light]=$?
  wait "${pid[training]}"; rc[training]=$?
  kill "$watcher" 2>/dev/null
  trap - INT TERM
  for lane in training light; do
    echo
    echo "==================== the $lane lane ===================="
    cat "$logs/$lane.log"
  done
  rm -rf "$logs"
fi
echo "make test: exit status light lane ${rc[light]}, training lane ${rc[training]}, heavy lane ${rc[heavy]}"
if [[ ${rc[light]} -eq 5 && ${rc[training]} -eq 5 && ${rc[heavy]} -eq 5 ]]; then
  echo "make test: pytest collected no tests" >&2
  exit 5
fi
for lane in "${LANES[@]}"; do
  if [[ ${rc[$lane]} -ne 0 && ${rc[$lane]} -ne 5 ]]; then exit "${rc[$lane]}"; fi
done
exit 0
