"""The documents of the ``reverse_tiny`` lm-eval task (reverse_tiny.yaml): the JSONL file next to this
one, as lm-eval's ``custom_dataset`` (it calls this with the task's metadata as keywords)."""

import json
from pathlib import Path

import datasets


def docs(**_: object) -> datasets.DatasetDict:
    path = Path(__file__).with_suffix(".jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
