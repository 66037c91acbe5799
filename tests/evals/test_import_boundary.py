"""studio/evals calls models only through the gateway: no provider or engine SDK is imported there."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = ("openai", "litellm", "vllm", "anthropic", "sglang")
EVALS = Path(__file__).resolve().parents[2] / "studio" / "evals"


def test_evals_import_no_model_sdk():
    offenders = []
    for path in EVALS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(EVALS)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders
