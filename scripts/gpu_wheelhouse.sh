#!/usr/bin/env bash
# Download every file of the hashed GPU lock(s) into a wheelhouse, on any linux x86_64 machine with the
# internet (no GPU needed), for a GPU machine without it (docs/operations.md, "Offline GPU machines"):
#   bash scripts/gpu_wheelhouse.sh wheelhouse [--sglang] [--lock FILE]
# then, there: PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/wheelhouse make setup GPU=1 [SGLANG=1]
# pip checks the lock's hashes on download and again on install. --no-deps lets pip fetch for another
# platform, sdists included (deepspeed has no wheel); pip does not widen --platform to the older
# manylinux tags a wheel may carry, so every tag up to the lock's glibc is listed.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { echo "usage: bash scripts/gpu_wheelhouse.sh DIR [--sglang] [--lock FILE]" >&2; exit 2; }
DIR="" SGLANG=0 LOCKS=()
while (($#)); do
  case $1 in
    --sglang) SGLANG=1 ;;
    --lock) (($# > 1)) || usage; LOCKS+=("$2"); shift ;;
    -h|--help) usage ;;
    -*) echo "gpu_wheelhouse: unknown option '$1'" >&2; usage ;;
    *) [[ -z $DIR ]] || usage; DIR=$1 ;;
  esac
  shift
done
[[ -n $DIR ]] || usage
((${#LOCKS[@]})) || { LOCKS=(requirements/lock-gpu.txt); ((SGLANG)) && LOCKS+=(requirements/lock-gpu-sglang.txt); }
PIP=(python3 -m pip --disable-pip-version-check)
[[ -x .venv/bin/python ]] && PIP=(.venv/bin/python -m pip --disable-pip-version-check)

platforms=(--platform linux_x86_64 --platform manylinux1_x86_64 --platform manylinux2010_x86_64
           --platform manylinux2014_x86_64)
for v in $(seq 5 34); do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
mkdir -p "$DIR"
for lock in "${LOCKS[@]}"; do
  echo "==> $lock -> $DIR"
  "${PIP[@]}" download --no-deps --require-hashes -r "$lock" -d "$DIR" \
    "${platforms[@]}" --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none
done
# Build backends for what installs from source there: the project itself, deepspeed's sdist.
"${PIP[@]}" download -d "$DIR" "setuptools>=68" wheel
echo "==> $(ls "$DIR" | wc -l) files in $DIR; on the GPU machine:" \
     "PIP_NO_INDEX=1 PIP_FIND_LINKS=$DIR make setup GPU=1$( ((SGLANG)) && echo ' SGLANG=1')"
