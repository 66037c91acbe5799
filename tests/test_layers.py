"""The import contracts in `.importlinter` (interfaces -> services -> core; studio never imports
deployments; the engine base class knows no engine) hold, and a new back-import breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the copy under test, not the editable install, is what grimp reads.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, "--config", str(root / ".importlinter"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_contracts_hold():
    r = lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_a_new_back_import_breaks_them(tmp_path):
    for name in ("studio", "deployments"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    core = tmp_path / "studio" / "errors.py"
    core.write_text(core.read_text() + "\nimport studio.api.app  # a core module reaching up\n")
    r = lint(tmp_path)
    assert r.returncode != 0
    assert "studio.errors -> studio.api.app" in r.stdout, r.stdout
