#!/usr/bin/env bash
# Re-generate requirements/lock-cpu.txt from the current .venv (after changing pins in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip freeze --exclude-editable \
  | grep -v -E '^(-e |llm-studio)' \
  | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/' > requirements/lock-cpu.txt
echo "wrote requirements/lock-cpu.txt ($(wc -l < requirements/lock-cpu.txt) packages)"
