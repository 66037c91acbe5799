#!/usr/bin/env bash
# The GPU path, checked in one go on one GPU machine with no internet (issue 24 item 7): a GPU-sized
# tiny model built locally, a studio of its own (studio up), then the shipped GPU recipes through the
# studio's own CLI, each step timed, and a JSON report. See docs/operations.md ("GPU machines").
#   make setup GPU=1 SGLANG=1 && bash scripts/gpu_check.sh --out gpu-report.json
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

STEPS=(sft_lora qlora grpo_vllm serve zero2)
declare -A WHAT=(
  [prepare]="studio models make-tiny at a GPU-sized shape, the toy datasets, studio up (always runs)"
  [sft_lora]="bf16 SFT LoRA, one GPU worker (configs/train/sft_reverse_tiny.yaml)"
  [qlora]="QLoRA: 4-bit NF4 base, bf16 compute (configs/train/sft_qwen05b_qlora_gpu.yaml on the tiny model)"
  [grpo_vllm]="GRPO with the vLLM rollout actor on the same GPU (configs/train/grpo_reverse_tiny.yaml)"
  [serve]="the tiny model served by vLLM and by SGLang behind the same router; greedy /v1 answers compared"
  [zero2]="DeepSpeed ZeRO-2 on one GPU (configs/train/sft_qwen05b_deepspeed_gpu.yaml on the tiny model)"
)
# ~0.1B parameters: head_dim 128 (every GPU attention backend has it), bf16-friendly widths.
SHAPE_DEFAULT="vocab_size=4096 hidden_size=1024 intermediate_size=2816 num_hidden_layers=8 num_attention_heads=8 num_key_value_heads=8 max_position_embeddings=2048"

usage() {
  cat <<EOF
usage: bash scripts/gpu_check.sh [--out FILE] [--work DIR] [--only STEP,...] [--shape "k=v ..."]
                                 [--serve-dtype DTYPE] [--step-timeout S] [--keep] [--dry-run] [--help]

Runs the GPU path in one go on one NVIDIA GPU, offline, and writes a JSON report. Steps, in order:
  prepare    ${WHAT[prepare]}
$(for s in "${STEPS[@]}"; do printf '  %-10s %s\n' "$s" "${WHAT[$s]}"; done)

  --out FILE          the JSON report (default: WORK/gpu-check.json)
  --work DIR          scratch folder; STUDIO_HOME is WORK/home (default: a new folder under /tmp)
  --only STEP,...     run only these steps (prepare always runs): ${STEPS[*]}
  --shape "k=v ..."   the tiny model's shape (studio models make-tiny overrides); default:
                      $SHAPE_DEFAULT
  --serve-dtype DTYPE dtype of both serving engines (default float32: a random-init model's greedy
                      answers agree across engines only at full precision)
  --step-timeout S    seconds a step may take (default 1800)
  --keep              leave the studio running and WORK in place afterwards
  --dry-run           print the plan (every command) and exit; needs no GPU
  --help              this text

Exit status: 0 every step passed, 1 a step failed (the report says which, with its log's tail),
2 bad arguments or no GPU. Needs the GPU environment: make setup GPU=1 SGLANG=1 (the serve step runs
the SGLang replica in .venv-sglang through STUDIO_SGLANG_PYTHON).
EOF
}

die() { echo "gpu_check: $*" >&2; exit 2; }
OUT="" WORK="" ONLY="" SHAPE=$SHAPE_DEFAULT SERVE_DTYPE=float32 STEP_TIMEOUT=1800 KEEP=0 DRY=0
while (($#)); do
  case $1 in
    --help|-h) usage; exit 0 ;;
    --out) (($# > 1)) || die "--out needs a file"; OUT=$2; shift ;;
    --work) (($# > 1)) || die "--work needs a folder"; WORK=$2; shift ;;
    --only) (($# > 1)) || die "--only needs a comma-separated list of steps: ${STEPS[*]}"; ONLY=$2; shift ;;
    --shape) (($# > 1)) || die "--shape needs key=value pairs"; SHAPE=$2; shift ;;
    --serve-dtype) (($# > 1)) || die "--serve-dtype needs a dtype"; SERVE_DTYPE=$2; shift ;;
    --step-timeout) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--step-timeout needs a whole number of seconds"
                    STEP_TIMEOUT=$2; shift ;;
    --keep) KEEP=1 ;;
    --dry-run) DRY=1 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

SELECTED=("${STEPS[@]}")
if [[ -n $ONLY ]]; then
  SELECTED=()
  IFS=, read -ra asked <<< "$ONLY"
  for s in "${asked[@]}"; do
    [[ -n ${WHAT[$s]+x} && $s != prepare ]] \
      || die "unknown step '$s' in --only; choose from: ${STEPS[*]} (prepare always runs)"
  done
  for s in "${STEPS[@]}"; do [[ ",$ONLY," == *",$s,"* ]] && SELECTED+=("$s"); done
fi

if ((!DRY)); then  # before anything is made
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU ' \
    || die "no NVIDIA GPU here (nvidia-smi -L lists none): this check needs one CUDA GPU; run it on a GPU machine, or --dry-run to see the plan"
  [[ -x $ROOT/.venv/bin/studio ]] || die "no $ROOT/.venv/bin/studio: run make setup GPU=1 SGLANG=1 first"
fi
[[ -n $WORK ]] || WORK=$( ((DRY)) && echo "/tmp/gpu-check.XXXXXX" || mktemp -d /tmp/gpu-check.XXXXXX)
[[ -n $OUT ]] || OUT=$WORK/gpu-check.json
export STUDIO_HOME=$WORK/home
PORT=${STUDIO_HTTP_PORT:-8000}
PY=$ROOT/.venv/bin/python
STUDIO=$ROOT/.venv/bin/studio
SGLANG_PY=${STUDIO_SGLANG_PYTHON:-$ROOT/.venv-sglang/bin/python}
export STUDIO_SGLANG_PYTHON=$SGLANG_PY  # engine: sglang replicas run it (the studio and the CLI see it)
TINY=$STUDIO_HOME/models/tiny
FOLLOW=(--follow --logs)

# Each step is a list of commands (one a line), shown by --dry-run and run by bash -c, stopping at the
# first failure; an "always: " line (clean-up) runs anyway, and its own failure is only logged.
cmds() {
  case $1 in
    prepare) cat <<EOF
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() and torch.version.cuda else 'torch sees no CUDA GPU (torch ' + torch.__version__ + '): run make setup GPU=1')"
$STUDIO models make-tiny --out $TINY $SHAPE
$PY -m studio.train.toy_data
STUDIO_SGLANG_PYTHON=$SGLANG_PY $STUDIO up --config configs/serve/studio_api.yaml
EOF
    ;;
    sft_lora) cat <<EOF
$STUDIO train submit configs/train/sft_reverse_tiny.yaml name=gpu-check-sft base_model=$TINY hyper.bf16=true hyper.epochs=3 resources.use_gpu=true resources.num_workers=1 resources.gpus_per_worker=1 ${FOLLOW[*]}
EOF
    ;;
    qlora) cat <<EOF
$STUDIO train submit configs/train/sft_qwen05b_qlora_gpu.yaml name=gpu-check-qlora base_model=$TINY hyper.epochs=1 hyper.max_seq_length=64 resources.num_workers=1 eval_after.limit=50 ${FOLLOW[*]}
EOF
    ;;
    grpo_vllm) cat <<EOF
$STUDIO train submit configs/train/grpo_reverse_tiny.yaml name=gpu-check-grpo base_model=$TINY hyper.bf16=true resources.use_gpu=true resources.num_workers=1 resources.gpus_per_worker=0.5 grpo.rollout.engine=vllm grpo.rollout.num_gpus=0.5 grpo.rollout.dtype=bfloat16 grpo.rollout.gpu_memory_utilization=0.3 ${FOLLOW[*]}
EOF
    ;;
    serve)
      for engine in vllm sglang; do
        echo "$STUDIO serve deploy configs/serve/models/tiny2.yaml name=gpu-check-$engine deployment.engine.model=$TINY deployment.engine.engine=$engine deployment.engine.dtype=$SERVE_DTYPE deployment.engine.gpu_memory_utilization=0.3 deployment.num_gpus=0.5 deployment.memory_gib=8"
      done
      echo "$PY scripts/gpu_check_compare.py --base-url http://127.0.0.1:$PORT --key-file $STUDIO_HOME/admin.key --models gpu-check-vllm,gpu-check-sglang --out $WORK/serve-compare.json"
      echo "always: $STUDIO serve evict gpu-check-vllm"
      echo "always: $STUDIO serve evict gpu-check-sglang"
    ;;
    zero2) cat <<EOF
$STUDIO train submit configs/train/sft_qwen05b_deepspeed_gpu.yaml name=gpu-check-zero2 base_model=$TINY hyper.epochs=1 hyper.max_seq_length=64 resources.num_workers=1 ${FOLLOW[*]}
EOF
    ;;
  esac
}

if ((DRY)); then
  echo "gpu_check plan (dry run): WORK=$WORK STUDIO_HOME=$STUDIO_HOME STUDIO_SGLANG_PYTHON=$SGLANG_PY report=$OUT"
  for s in prepare "${SELECTED[@]}"; do
    echo "[$s] ${WHAT[$s]}"
    cmds "$s" | sed 's/^/    /'
  done
  echo "[finally] $STUDIO down (unless --keep); the report: $OUT"
  exit 0
fi


mkdir -p "$WORK/logs" "$(dirname "$OUT")"
RESULTS=$WORK/results.jsonl; : > "$RESULTS"
STARTED=$(date -u +%FT%TZ)
report() {  # the JSON report, rewritten after every step (a crash still leaves one)
  "$PY" - "$RESULTS" "$OUT" "$STARTED" "$WORK" "$SHAPE" "$SERVE_DTYPE" "$SGLANG_PY" <<'EOF'
import json, os, subprocess, sys, datetime, importlib.metadata as md
results, out, started, work, shape, dtype, sglang_py = sys.argv[1:]
steps = [json.loads(line) for line in open(results) if line.strip()]
def version(pkg):
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None
gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                      capture_output=True, text=True).stdout.strip().splitlines()
try:
    serve = json.load(open(f"{work}/serve-compare.json"))
except (OSError, ValueError):
    serve = None
report = {"started": started, "finished": datetime.datetime.now(datetime.UTC).strftime("%FT%TZ"),
          "gpus": gpus, "tiny_shape": shape, "serve_dtype": dtype,
          "versions": {p: version(p) for p in ("torch", "vllm", "ray", "transformers", "trl", "peft",
                                                "bitsandbytes", "deepspeed")},
          "sglang": subprocess.run([sglang_py, "-c", "import importlib.metadata as m; print(m.version('sglang'))"],
                                   capture_output=True, text=True).stdout.strip() or None
                    if os.access(sglang_py, os.X_OK) else None,
          "sglang_python": sglang_py,
          "steps": steps, "serve_compare": serve, "ok": bool(steps) and all(s["ok"] for s in steps)}
json.dump(report, open(out, "w"), indent=2)
EOF
}
run_step() {  # run_step NAME: its commands one after the other, stopping at the first failure
  local name=$1 log=$WORK/logs/$1.log t0 rc=0 t1
  echo "==> [$name] ${WHAT[$name]} (log: $log)"
  t0=$(date +%s.%N)
  while IFS= read -r c; do
    if [[ $c == "always: "* ]]; then  # clean-up: runs after a failure too, and never fails the step
      c=${c#always: }; echo "+ $c" >> "$log"
      timeout 300 bash -c "$c" >> "$log" 2>&1 || true
      continue
    fi
    ((rc == 0)) || continue
    echo "+ $c" >> "$log"
    timeout "$STEP_TIMEOUT" bash -c "$c" >> "$log" 2>&1 || rc=$?
  done < <(cmds "$name")
  t1=$(date +%s.%N)
  "$PY" - "$name" "$rc" "$t0" "$t1" "$log" "${WHAT[$name]}" >> "$RESULTS" <<'EOF'
import json, sys
name, rc, t0, t1, log, what = sys.argv[1:]
tail = open(log, errors="replace").read().splitlines()[-40:] if rc != "0" else []
print(json.dumps({"name": name, "what": what, "ok": rc == "0", "exit_code": int(rc),
                  "seconds": round(float(t1) - float(t0), 1), "log": log, "error_tail": tail}))
EOF
  report
  if [[ $rc == 0 ]]; then echo "    ok"; else echo "    FAILED (exit $rc): tail of $log" >&2; tail -n 15 "$log" >&2; fi
  return "$rc"
}
finish() {
  ((KEEP)) || "$STUDIO" down >> "$WORK/logs/down.log" 2>&1 || true
  report
  echo "==> report: $OUT"
}
trap finish EXIT

run_step prepare || exit 1
failed=0
for s in "${SELECTED[@]}"; do run_step "$s" || failed=1; done
exit "$failed"
