#!/usr/bin/env bash
# `make test`: the suite in lanes that run at the same time (docs/decisions.md, 2026-12-07).
#   heavy     the `slow`/`e2e` tests that start an engine or a studio stack, or wait on deadlines (not
#             marked `parallel` or `no_engine`): one at a time in one pytest, in the foreground, its
#             output live (two vLLM engines at once starve each other on 2 cores);
#   light     everything else: the tests that start no Ray cluster, engine or stack, the `parallel`
#             ones, and the `no_engine` ones (Ray clusters and training jobs, never an engine, no tight
#             deadline), on TEST_WORKERS pytest-xdist workers (default 1) in the background, its output
#             in a log printed when the heavy lane ends.
# The light lane runs in a session of its own (setsid), and tests/lanes.py sets that session and every
# session its tests start (Ray heads, drivers, CLI runs, browsers) to nice STUDIO_TEST_BACKGROUND_NICE
# (default 10): with the kernel's autogroups the CPU is shared between sessions first, and a plain
# nice does not hold back the sessions tests start. The heavy lane alone leaves ~35 % of 2 cores idle
# (one process importing or starting something while the other core waits); the light lane fills it.
# STUDIO_TEST_LANES=three (opt-in) runs the `no_engine` tests in a third, training, lane of their own
# beside the other two (default nice 19); measured slower than two lanes and not green every time.
# STUDIO_TEST_LANES=serial runs the lanes one after the other (light on TEST_WORKERS default 2, then
# heavy, without the `no_engine` tests' move). pytest exits 5 when it collected no tests: a lane with
# none is fine (arguments naming one module), all with none fails the run, saying so. Arguments go to
# every lane.
set -uo pipefail
cd "$(dirname "$0")/.."
# Hundreds of processes (pytest and its xdist workers, Ray workers, engines, CLI runs) import the
# project's modules: with PYTHONDONTWRITEBYTECODE set (some machines set it) each compiled them from
# source again, ~6 CPU-s of every pytest's collection. The caches go to __pycache__ (git-ignored).
unset PYTHONDONTWRITEBYTECODE
PY=${PY:-.venv/bin/python}
mode=${STUDIO_TEST_LANES:-together}
case $mode in
  together|three|serial) ;;
  *) echo "make test: STUDIO_TEST_LANES=$mode is not a lane layout; use together (the default), three or serial" >&2
     exit 2 ;;
esac
LIGHT=(-m "parallel or not (slow or e2e)" --dist loadfile)
HEAVY=(-m "(slow or e2e) and not parallel")
case $mode in
  together)
    # The `no_engine` tests join the light lane: the heavy lane keeps what starts an engine or a stack.
    LIGHT=(-m "parallel or not (slow or e2e) or no_engine" --dist loadfile)
    HEAVY=(-m "(slow or e2e) and not parallel and not no_engine")
    BACKGROUND=(light); LANES=(light heavy); nice=${STUDIO_TEST_BACKGROUND_NICE:-10} ;;
  three)
    HEAVY=(-m "(slow or e2e) and not parallel and not no_engine")
    TRAINING=(-m "(slow or e2e) and not parallel and no_engine")
    BACKGROUND=(light training); LANES=(light training heavy); nice=${STUDIO_TEST_BACKGROUND_NICE:-19} ;;
  serial)
    LANES=(light heavy) ;;
esac
declare -A rc

if [[ $mode == serial ]]; then
  PYTEST_STUDIO_LANE=light "$PY" -m pytest "${LIGHT[@]}" -n "${TEST_WORKERS:-2}" "$@"; rc[light]=$?
  PYTEST_STUDIO_LANE=heavy "$PY" -m pytest "${HEAVY[@]}" "$@"; rc[heavy]=$?
else
  workers=${TEST_WORKERS:-1}
  logs=$(mktemp -d "${TMPDIR:-/tmp}/studio-test-lanes.XXXXXX")
  declare -A pid
  # setsid: each background lane in a session of its own (tests/lanes.py sets it and the sessions it
  # starts to $nice; the heavy lane's session, this script's, is left alone).
  PYTEST_STUDIO_LANE=light setsid nice -n "$nice" "$PY" -m pytest "${LIGHT[@]}" -n "$workers" "$@" \
    > "$logs/light.log" 2>&1 &
  pid[light]=$!
  if [[ $mode == three ]]; then
    PYTEST_STUDIO_LANE=training setsid nice -n "$nice" "$PY" -m pytest "${TRAINING[@]}" "$@" \
      > "$logs/training.log" 2>&1 &
    pid[training]=$!
  fi
  "$PY" -m tests.lanes "$nice" "${BACKGROUND[@]}" &
  watcher=$!
  # The background lanes are not in the terminal's session: Ctrl-C reaches them through this trap
  # (each lane's process group: pytest and its xdist workers; fixtures stop the Ray heads they started).
  stop_background() {
    for lane in "${BACKGROUND[@]}"; do kill -INT -- "-${pid[$lane]}" 2>/dev/null; done
    sleep 5
    for lane in "${BACKGROUND[@]}"; do kill -TERM -- "-${pid[$lane]}" 2>/dev/null; done
  }
  trap stop_background INT TERM
  echo "make test: the ${BACKGROUND[*]} lane(s) (pytest-xdist, $workers worker(s)) run beside this one at" \
       "session nice $nice; their output is printed when this lane ends ($logs)"
  PYTEST_STUDIO_LANE=heavy "$PY" -m pytest "${HEAVY[@]}" "$@"; rc[heavy]=$?
  for lane in "${BACKGROUND[@]}"; do wait "${pid[$lane]}"; rc[$lane]=$?; done
  kill "$watcher" 2>/dev/null
  trap - INT TERM
  for lane in "${BACKGROUND[@]}"; do
    echo
    echo "==================== the $lane lane ===================="
    cat "$logs/$lane.log"
  done
  rm -rf "$logs"
fi
summary="make test: exit status"; none=1
for lane in "${LANES[@]}"; do
  summary+=" $lane lane ${rc[$lane]}"
  [[ ${rc[$lane]} -eq 5 ]] || none=0
done
echo "$summary"
if [[ $none -eq 1 ]]; then echo "make test: pytest collected no tests" >&2; exit 5; fi
for lane in "${LANES[@]}"; do
  if [[ ${rc[$lane]} -ne 0 && ${rc[$lane]} -ne 5 ]]; then exit "${rc[$lane]}"; fi
done
exit 0
