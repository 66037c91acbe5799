"""Greedy /v1 answers of two models behind the same router, compared (scripts/gpu_check.sh, step serve).

    python scripts/gpu_check_compare.py --base-url http://127.0.0.1:8000 --key-file KEY \
        --models gpu-check-vllm,gpu-check-sglang --out serve-compare.json

Sends the same completions and chat requests (temperature 0) to each model through the studio's
router, writes every pair of answers and whether they are equal as JSON; exits 1 unless all are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

PROMPTS = ["reverse: 6 0 4 8", "reverse: 1 2 3", "reverse: 9 7 5 3 1", "reverse: 4 4 0",
           "the model reads digits", "reverse: 2 8 1 7", "one by one", "reverse: 5 0 5"]


def ask(client: httpx.Client, model: str, kind: str, prompt: str) -> str:
    body: dict = {"model": model, "max_tokens": 16, "temperature": 0, "seed": 0}
    if kind == "completions":
        r = client.post("/v1/completions", json={**body, "prompt": prompt})
    else:
        r = client.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": prompt}]})
    if r.status_code != 200:
        raise SystemExit(f"{model} {kind}: HTTP {r.status_code}: {r.text[:500]}")
    choice = r.json()["choices"][0]
    return choice["text"] if kind == "completions" else choice["message"]["content"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--key-file", required=True, type=Path)
    p.add_argument("--models", required=True, help="two model names, comma-separated")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args()
    models = a.models.split(",")
    if len(models) != 2:
        p.error("--models needs exactly two names, e.g. gpu-check-vllm,gpu-check-sglang")
    headers = {"Authorization": f"Bearer {a.key_file.read_text().strip()}"}
    rows = []
    with httpx.Client(base_url=a.base_url, headers=headers, timeout=120) as client:
        for kind in ("completions", "chat"):
            for prompt in PROMPTS:
                answers = {m: ask(client, m, kind, prompt) for m in models}
                rows.append({"endpoint": kind, "prompt": prompt, "answers": answers,
                             "same": len(set(answers.values())) == 1})
    same = sum(r["same"] for r in rows)
    result = {"models": models, "same": same, "total": len(rows), "ok": same == len(rows), "rows": rows}
    a.out.write_text(json.dumps(result, indent=2))
    print(f"{same}/{len(rows)} answers the same from {models[0]} and {models[1]}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
