"""Snapshot tools on real snapshots: stats per split, samples, diffs, exports that round-trip,
materialized splits with lineage, and the CLI around them."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from studio.cli.main import app as cli
from studio.data.ingest import ingest_file
from studio.data.tools import diff_snapshots, export_snapshot, sample_rows, snapshot_stats, split_snapshot
from studio.errors import StudioError
from studio.models.tiny import TinyModelSpec, build_tokenizer


def pcs(n: int, start: int = 0) -> list[dict]:
    return [{"prompt": f"reverse: {' '.join(str(i))}", "completion": " ".join(str(i)[::-1])}
            for i in range(start, start + n)]


@pytest.fixture
def digits(settings, write_rows):
    ingest_file(write_rows("d1.jsonl", pcs(40)), "digits", settings)
    ingest_file(write_rows("d2.jsonl", pcs(40, 20)), "digits", settings)  # v2: 20 shared, 20 new
    return settings


def test_stats_count_tokens_per_split_with_the_tokenizer(digits, tmp_path):
    tok = tmp_path / "tok"
    build_tokenizer(TinyModelSpec()).save_pretrained(tok)
    out = snapshot_stats(digits, "digits@1", tokenizer=str(tok), validation_ratio=0.25, seed=3)
    assert out["unit"] == "tokens" and out["rows"] == 40
    assert (out["splits"]["train"]["rows"], out["splits"]["validation"]["rows"]) == (30, 10)
    assert out["splits"]["train"]["tokens"] + out["splits"]["validation"]["tokens"] == out["tokens"]
    assert sum(b["rows"] for b in out["histogram"]) == 40
    words = snapshot_stats(digits, "digits@1")
    assert words["unit"] == "words" and words["words"] < out["tokens"]


def test_sample_is_seeded(digits):
    assert sample_rows(digits, "digits", 5, seed=1) == sample_rows(digits, "digits", 5, seed=1)
    assert sample_rows(digits, "digits", 5, seed=1) != sample_rows(digits, "digits", 5, seed=2)


def test_diff_counts_rows_on_each_side(digits):
    d = diff_snapshots(digits, "digits@1", "digits@2", show=2)
    assert (d["only_a"], d["only_b"], d["common"]) == (20, 20, 20)
    assert d["examples_only_a"] == pcs(2) and d["examples_only_b"] == pcs(2, 40)



def test_diff_pairs_a_row_whose_prompt_stayed_as_changed(settings, write_rows):
    """v2 keeps rows 0-1, answers prompt 2 and a duplicate of prompt 3 differently (two changed),
    drops prompt 4 (removed) and adds prompt 9 (added)."""
    rows = pcs(5) + [pcs(1, 3)[0]]  # prompt 3 twice in v1
    new = pcs(2) + [{"prompt": r["prompt"], "completion": "x"} for r in pcs(2, 2)] + pcs(1, 3) + pcs(1, 9)
    ingest_file(write_rows("v1.jsonl", rows), "edits", settings)
    ingest_file(write_rows("v2.jsonl", new), "edits", settings)
    d = diff_snapshots(settings, "edits@1", "edits@2", show=5)
    assert (d["common"], d["changed"], d["removed"], d["added"]) == (3, 2, 1, 1)
    assert (d["only_a"], d["only_b"]) == (3, 3)
    assert d["examples_changed"] == [{"a": pcs(1, 2)[0], "b": {"prompt": pcs(1, 2)[0]["prompt"], "completion": "x"}},
                                     {"a": pcs(1, 3)[0], "b": {"prompt": pcs(1, 3)[0]["prompt"], "completion": "x"}}]
    assert d["examples_removed"] == pcs(1, 4) and d["examples_added"] == pcs(1, 9)
    short = diff_snapshots(settings, "edits@1", "edits@2", show=1)
    assert len(short["examples_changed"]) == 1 and short["examples_changed"][0]["a"] == pcs(1, 2)[0]

def test_exports_round_trip(digits, tmp_path):
    import datasets

    j = export_snapshot(digits, "digits@1", tmp_path / "out.jsonl", "jsonl")
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert j["rows"] == 40 and lines == pcs(40)
    export_snapshot(digits, "digits@1", tmp_path / "out.parquet", "parquet", split="validation",
                    validation_ratio=0.1, seed=0)
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 4
    export_snapshot(digits, "digits@1", tmp_path / "hf", "hf")
    assert datasets.load_from_disk(str(tmp_path / "hf"))[0] == pcs(1)[0]
    with pytest.raises(StudioError, match="already exists"):
        export_snapshot(digits, "digits@1", tmp_path / "out.jsonl", "jsonl")


def test_split_materializes_two_snapshots_with_lineage(digits):
    out = split_snapshot(digits, "digits@1", 0.25, seed=7)
    assert (out["train"]["rows"], out["validation"]["rows"]) == (30, 10)
    assert split_snapshot(digits, "digits@1", 0.25, seed=7) == {
        k: {**v, "version": 1} for k, v in out.items()}  # same input, same ids, no new version
    d = diff_snapshots(digits, "digits-train", "digits-validation")
    assert d["common"] == 0
    stats = snapshot_stats(digits, "digits-validation")
    assert stats["lineage"]["transform"] == "split"
    assert stats["lineage"]["params"] == {"split": "validation", "validation_ratio": 0.25, "seed": 7}


def test_cli_curate_and_show_dropped(digits, tmp_path, monkeypatch):
    from studio.settings import get_settings

    monkeypatch.setenv("STUDIO_HOME", str(digits.home))
    monkeypatch.setenv("STUDIO_DATABASE_URL", digits.db_url)
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps at the terminal width otherwise
    get_settings.cache_clear()
    try:
        recipe = tmp_path / "c.yaml"
        recipe.write_text("# studio data curate digits --recipe c.yaml\nsource: digits@1\n"
                          "steps:\n  - type: length\n    max_chars: 14\n")
        runner = CliRunner()
        r = runner.invoke(cli, ["data", "curate", "--recipe", str(recipe), "--name", "short"])
        assert r.exit_code == 0, r.output
        assert "short@1 created" in r.output and "30 dropped" in r.output
        r = runner.invoke(cli, ["data", "show", "short", "--dropped", "--limit", "2"])
        assert r.exit_code == 0, r.output
        assert "30 dropped rows" in r.output and "[length] 16 characters, more than max_chars 14" in r.output
        r = runner.invoke(cli, ["data", "stats", "short"])
        assert r.exit_code == 0 and "10 rows" in r.output, r.output
        r = runner.invoke(cli, ["data", "diff", "digits@1", "short"])
        assert r.exit_code == 0 and '"only_a": 30' in r.output, r.output
    finally:
        get_settings.cache_clear()
