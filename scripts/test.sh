#!/usr/bin/env bash
# `make test`: the suite in lanes that run at the same time (docs/decisions.md, 2026-12-07).
#   heavy     the `slow`/`e2e` tests that start a Ray cluster, an engine or a studio stack (not marked
#             `parallel`): one at a time in one pytest, in the foreground, its output live (two vLLM
#             engines at once starve each other on 2 cores);
#   light     everything else (and `parallel`) on TEST_WORKERS pytest-xdist workers (default 1) at nice
#             10, in the background, its output in a log printed when the heavy lane ends.
# The heavy lane is mostly one process importing or starting something while the other core waits
# (~40 % of 2 cores idle); the light lane fills that time instead of running after it.
# STUDIO_TEST_LANES=three (opt-in) also takes the `no_engine` tests (Ray clusters and training jobs,
# never an engine) out of the heavy lane into a third, training, lane. Both background lanes are held
# back: where a CPU cgroup can be made (root, cgroup v1 `cpu` or v2 with `cpu`), each runs in one of
# its own with a weight (STUDIO_TEST_TRAINING_SHARES, default 256; STUDIO_TEST_LIGHT_SHARES, default
# 128; 1,024 is a full share), which every process and session its tests start inherits; elsewhere
# in sessions of their own set to nice STUDIO_TEST_BACKGROUND_NICE (default 19) by tests/lanes.py
# (with the kernel's autogroups the CPU is shared between sessions first, and a plain nice does not
# hold back the sessions tests start). Measured (docs/decisions.md, 2026-12-08): 45.5 min where two
# lanes took 52 the same day, but one teardown failed under load; it stays opt-in until it is green.
# STUDIO_TEST_LANES=serial runs the lanes one after the other (light on TEST_WORKERS default 2, then
# heavy). pytest exits 5 when it collected no tests: a lane with none is fine (arguments naming one
# module), all with none fails the run, saying so. Arguments go to every lane.
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
if [[ $mode == three ]]; then
  HEAVY=(-m "(slow or e2e) and not parallel and not no_engine")
  TRAINING=(-m "(slow or e2e) and not parallel and no_engine")
  LANES=(light training heavy)
else
  HEAVY=(-m "(slow or e2e) and not parallel")
  LANES=(light heavy)
fi
# A CPU cgroup for a background lane (three lanes): its path, or nothing when none can be made.
lane_cgroup() {
  local name=studio-test-$$-$1 shares=$2 dir
  if [[ -w /sys/fs/cgroup/cpu && -e /sys/fs/cgroup/cpu/cpu.shares ]]; then
    dir=/sys/fs/cgroup/cpu/$name
    mkdir "$dir" 2>/dev/null && echo "$shares" > "$dir/cpu.shares" 2>/dev/null && { echo "$dir"; return; }
  elif [[ -w /sys/fs/cgroup && -e /sys/fs/cgroup/cgroup.subtree_control ]] \
       && grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control; then
    dir=/sys/fs/cgroup/$name  # cgroup v2: cpu.weight is 1-10000, 100 a full share
    mkdir "$dir" 2>/dev/null && echo $(( shares * 100 / 1024 > 0 ? shares * 100 / 1024 : 1 )) > "$dir/cpu.weight" 2>/dev/null \
      && { echo "$dir"; return; }
  fi
  [[ -n ${dir:-} ]] && rmdir "$dir" 2>/dev/null
  return 0
}
# Run a command in cgroup $1 (none: as it is) in place of this (sub)shell: call it with `&`.
in_cgroup() {
  local dir=$1; shift
  if [[ -n $dir ]]; then
    exec bash -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' _ "$dir" "$@"
  else
    exec "$@"
  fi
}
# Remove a lane's cgroup, moving what is left in it (processes a test did not stop) to its parent.
drop_cgroup() {
  local dir=$1 p
  [[ -n $dir && -d $dir ]] || return 0
  for p in $(cat "$dir/cgroup.procs" 2>/dev/null); do echo "$p" > "$(dirname "$dir")/cgroup.procs" 2>/dev/null; done
  rmdir "$dir" 2>/dev/null || true
}
declare -A rc

if [[ $mode == serial ]]; then
  PYTEST_STUDIO_LANE=light "$PY" -m pytest "${LIGHT[@]}" -n "${TEST_WORKERS:-2}" "$@"; rc[light]=$?
  PYTEST_STUDIO_LANE=heavy "$PY" -m pytest "${HEAVY[@]}" "$@"; rc[heavy]=$?
elif [[ $mode != three ]]; then
  workers=${TEST_WORKERS:-1}
  log=$(mktemp "${TMPDIR:-/tmp}/studio-test-light.XXXXXX.log")
  PYTEST_STUDIO_LANE=light nice -n 10 "$PY" -m pytest "${LIGHT[@]}" -n "$workers" "$@" > "$log" 2>&1 &
  light_pid=$!
  # A background job ignores Ctrl-C: stop it with the heavy lane (pytest-xdist takes its workers along).
  trap 'kill -INT "$light_pid" 2>/dev/null; sleep 2; kill -TERM "$light_pid" 2>/dev/null' INT TERM
  echo "make test: the light lane (pytest-xdist, $workers worker(s)) runs beside this one; its output" \
       "is printed when this lane ends ($log)"
  PYTEST_STUDIO_LANE=heavy "$PY" -m pytest "${HEAVY[@]}" "$@"; rc[heavy]=$?
  wait "$light_pid"; rc[light]=$?
  trap - INT TERM
  echo
  echo "==================== the light lane (pytest-xdist, $workers worker(s)) ===================="
  cat "$log"
  rm -f "$log"
else
  workers=${TEST_WORKERS:-1}
  nice=${STUDIO_TEST_BACKGROUND_NICE:-19}
  logs=$(mktemp -d "${TMPDIR:-/tmp}/studio-test-lanes.XXXXXX")
  declare -A pid
  # setsid: each background lane in a session of its own (tests/lanes.py sets it and the sessions it
  # starts to $nice; the heavy lane's session, this script's, is left alone).
  # With a writable CPU cgroup (v1 `cpu`, or v2 with the `cpu` controller), each background lane runs
  # in a cgroup of its own with a CPU weight (STUDIO_TEST_TRAINING_SHARES, STUDIO_TEST_LIGHT_SHARES;
  # 1,024 is a full share): the kernel's autogroups apply only to the root cgroup, so every session a
  # lane's tests start (Ray heads, drivers, CLI runs) counts in the lane's one weight, whatever it
  # is. Without one, tests/lanes.py sets each of their sessions' nice value instead.
  declare -A cg
  cg[training]=$(lane_cgroup training "${STUDIO_TEST_TRAINING_SHARES:-256}")
  cg[light]=$(lane_cgroup light "${STUDIO_TEST_LIGHT_SHARES:-128}")
  PYTEST_STUDIO_LANE=light in_cgroup "${cg[light]}" setsid nice -n "$nice" "$PY" -m pytest "${LIGHT[@]}" \
    -n "$workers" "$@" > "$logs/light.log" 2>&1 &
  pid[light]=$!
  PYTEST_STUDIO_LANE=training in_cgroup "${cg[training]}" setsid nice -n "$nice" "$PY" -m pytest \
    "${TRAINING[@]}" "$@" > "$logs/training.log" 2>&1 &
  pid[training]=$!
  if [[ -n ${cg[light]} && -n ${cg[training]} ]]; then
    echo "make test: background lanes in CPU cgroups ${cg[training]} (shares ${STUDIO_TEST_TRAINING_SHARES:-256})" \
         "and ${cg[light]} (shares ${STUDIO_TEST_LIGHT_SHARES:-128})"
    watcher= held="by the weights of their cgroups"
  else
    "$PY" -m tests.lanes "$nice" light training &
    watcher=$! held="at session nice $nice"
  fi
  # The background lanes are not in the terminal's session: Ctrl-C reaches them through this trap
  # (each lane's process group: pytest and its xdist workers; fixtures stop the Ray heads they started).
  stop_background() {
    kill -INT -- "-${pid[light]}" "-${pid[training]}" 2>/dev/null
    sleep 5
    kill -TERM -- "-${pid[light]}" "-${pid[training]}" 2>/dev/null
  }
  trap stop_background INT TERM
  echo "make test: the light lane (pytest-xdist, $workers worker(s)) and the training lane run beside" \
       "this one, held back $held; their output" \
       "is printed when this lane ends ($logs)"
  PYTEST_STUDIO_LANE=heavy "$PY" -m pytest "${HEAVY[@]}" "$@"; rc[heavy]=$?
  wait "${pid[light]}"; rc[light]=$?
  wait "${pid[training]}"; rc[training]=$?
  [[ -n $watcher ]] && kill "$watcher" 2>/dev/null
  for lane in training light; do drop_cgroup "${cg[$lane]}"; done
  trap - INT TERM
  for lane in training light; do
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
