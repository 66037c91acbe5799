"""Toy datasets for the tiny-model recipes (``configs/train/*_tiny.yaml``), one per row kind:

    python -m studio.train.toy_data      # writes and ingests them into $STUDIO_HOME

reverse-train / reverse-test (prompt_completion, SFT and its held-out split), reverse-pref
(preference, DPO: the reversed digits are chosen, the digits as given are rejected) and tiny-text
(text, CPT). Deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from studio.models.tiny import reversal_example

_WORDS = "the model reads digits and writes them back in reverse order one by one".split()


def write_reversal_files(out_dir: Path, n_train: int = 2000, n_test: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """The demo task as prompt/completion JSONL: train and a disjoint test split."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    while len(rows) < n_train + n_test:
        prompt, answer = reversal_example(rng)
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"prompt": prompt, "completion": answer})
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "reverse_train.jsonl", out_dir / "reverse_test.jsonl"
    for path, part in zip(paths, (rows[:n_train], rows[n_train:]), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def write_preference_file(path: Path, n: int = 256, seed: int = 1) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, answer = reversal_example(rng)
        rows.append({"prompt": prompt, "chosen": answer, "rejected": prompt.removeprefix("reverse: ")})
    return _write(path, rows)


def write_text_file(path: Path, n: int = 256, seed: int = 2) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2:
            prompt, answer = reversal_example(rng)
            rows.append({"text": f"{prompt}\n{answer}"})
        else:
            rows.append({"text": " ".join(rng.choices(_WORDS, k=rng.randint(6, 14))).capitalize() + "."})
    return _write(path, rows)


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ingest_toy_datasets(settings, out_dir: Path | None = None) -> dict[str, str]:
    """Write and ingest all four; returns name → ``name@version``."""
    from studio.data.ingest import ingest_file

    out_dir = out_dir or settings.home_abs / "toy-data"
    train, test = write_reversal_files(out_dir)
    files = {"reverse-train": train, "reverse-test": test,
             "reverse-pref": write_preference_file(out_dir / "reverse_pref.jsonl"),
             "tiny-text": write_text_file(out_dir / "tiny_text.jsonl")}
    refs = {}
    for name, path in files.items():
        report = ingest_file(path, name, settings)
        refs[name] = f"{name}@{report.version}"
    return refs


if __name__ == "__main__":
    from studio.settings import StudioSettings
    from studio.store.db import init_db

    settings = StudioSettings()
    init_db(settings.db_url)
    for name, ref in ingest_toy_datasets(settings).items():
        print(f"{name}: {ref}")
