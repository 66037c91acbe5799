"""Finding, listing and splitting snapshots that a real ingest stored."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from studio.data.ingest import ingest_file
from studio.data.snapshots import (
    dataset_versions,
    list_datasets,
    load_split,
    read_table,
    resolve_snapshot,
    split_indices,
)
from studio.errors import NotFound, StudioError
from studio.store.db import session_scope
from studio.store.models import DatasetSnapshot

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints


def pc_rows(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"prompt": f"reverse: {i}", "completion": str(i)[::-1]} for i in range(start, start + n)]


@pytest.fixture
def two_datasets(settings, write_rows):
    """``digits`` with versions 1 (10 rows) and 2 (40 rows), ``words`` with one version."""
    reports = {
        "digits@1": ingest_file(write_rows("d1.jsonl", pc_rows(10)), "digits", settings),
        "digits@2": ingest_file(write_rows("d2.jsonl", [*pc_rows(40), "{bad"]), "digits", settings),
        "words@1": ingest_file(write_rows("w.jsonl", [{"text": "a"}, {"text": "b"}]), "words", settings),
    }
    return settings, reports


def test_list_datasets_shows_the_newest_version_per_name(two_datasets):
    settings, reports = two_datasets
    with session_scope(settings.db_url) as s:
        listed = list_datasets(s)
    assert [(d["name"], d["version"], d["rows"], d["kind"]) for d in listed] == [
        ("digits", 2, 40, "prompt_completion"),
        ("words", 1, 2, "text"),
    ]
    assert listed[0]["snapshot_id"] == reports["digits@2"].snapshot_id
    assert listed[0]["rejected_rows"] == 1
    assert listed[0]["columns"] == ["prompt", "completion"]
    assert datetime.fromisoformat(listed[0]["created_at"]).utcoffset() == timedelta(0)


def test_dataset_versions_are_oldest_first(two_datasets):
    settings, reports = two_datasets
    with session_scope(settings.db_url) as s:
        versions = dataset_versions(s, "digits")
        with pytest.raises(NotFound, match="no dataset named 'nope'"):
            dataset_versions(s, "nope")
    assert [(v["version"], v["snapshot_id"], v["rows"]) for v in versions] == [
        (1, reports["digits@1"].snapshot_id, 10),
        (2, reports["digits@2"].snapshot_id, 40),
    ]


def test_resolve_references(two_datasets):
    settings, reports = two_datasets
    v1, v2 = reports["digits@1"].snapshot_id, reports["digits@2"].snapshot_id
    with session_scope(settings.db_url) as s:
        assert resolve_snapshot(s, "digits").snapshot.id == v2
        assert resolve_snapshot(s, " digits@1 ").snapshot.id == v1
        assert resolve_snapshot(s, v1[:8]).snapshot.id == v1
        assert resolve_snapshot(s, v2).snapshot.id == v2


@pytest.mark.parametrize(
    "ref, error, message",
    [
        ("digits@3", NotFound, "has no version 3"),
        ("digits@x", StudioError, "version must be a number"),
        ("nope", NotFound, "no dataset named 'nope'"),
        ("nope@1", NotFound, "'nope' has no version 1"),
        ("0000000000", NotFound, "no snapshot with that id"),
        ("abc", NotFound, "no dataset named 'abc'"),  # too short to be taken as an id prefix
    ],
)
def test_bad_references(two_datasets, ref, error, message):
    settings, _ = two_datasets
    with session_scope(settings.db_url) as s, pytest.raises(error, match=message):
        resolve_snapshot(s, ref)


def test_ambiguous_id_prefix_is_refused(settings):
    with session_scope(settings.db_url) as s:
        for suffix in ("1", "2"):
            s.add(DatasetSnapshot(id="abcdef12" + suffix * 56, kind="text", row_count=1,
                                  columns=["text"], uri="/nowhere", stats={}))
    with session_scope(settings.db_url) as s:
        with pytest.raises(StudioError, match="ambiguous"):
            resolve_snapshot(s, "abcdef12")
        assert resolve_snapshot(s, "abcdef121").snapshot.id.endswith("1")


def test_load_split_round_trips_and_splits_deterministically(two_datasets):
    settings, reports = two_datasets
    uri = reports["digits@2"].uri
    everything = load_split(uri).to_pylist()
    assert everything == pc_rows(40)

    train = load_split(uri, "train", 0.25, seed=7).to_pylist()
    val = load_split(uri, "validation", 0.25, seed=7).to_pylist()
    assert len(val) == 10 and len(train) == 30
    keys = lambda rows: {r["prompt"] for r in rows}  # noqa: E731
    assert keys(train).isdisjoint(keys(val))
    assert keys(train) | keys(val) == keys(everything)
    # Same seed, same split; another seed, another split.
    assert load_split(uri, "validation", 0.25, seed=7).to_pylist() == val
    assert keys(load_split(uri, "validation", 0.25, seed=8).to_pylist()) != keys(val)


@pytest.mark.parametrize("n, ratio", [(1, 0.5), (2, 0.1), (10, 0.0), (101, 0.33), (1000, 0.05)])
def test_split_indices_partition_the_rows(n, ratio):
    train = split_indices(n, "train", ratio, seed=3)
    val = split_indices(n, "validation", ratio, seed=3)
    assert sorted(train + val) == list(range(n))
    assert train == sorted(train) and val == sorted(val)
    if ratio > 0 and n > 1:
        assert len(val) == max(1, round(n * ratio))  # a ratio above 0 always holds out a row
    else:
        assert val == []
    assert split_indices(n, "all", ratio, seed=3) == list(range(n))


@pytest.mark.parametrize(
    "split, ratio, message",
    [("test", 0.1, "unknown split 'test'"), ("train", 1.0, "out of range"),
     ("validation", -0.1, "out of range")],
)
def test_bad_split_arguments(split, ratio, message):
    with pytest.raises(StudioError, match=message):
        split_indices(10, split, ratio, seed=0)


def test_missing_snapshot_data_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="ingest the file again"):
        read_table(str(tmp_path / "gone.parquet"))
