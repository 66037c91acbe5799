"""The artifact store on a local directory (the default); other fsspec protocols share the code."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from studio.errors import NotFound
from studio.store.artifacts import ArtifactStore, open_uri


def test_put_and_get_bytes_round_trip(tmp_path):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    uri = store.put_bytes("a/b/data.bin", b"\x00payload")
    assert store.exists("a/b/data.bin")
    assert store.get_bytes("a/b/data.bin") == b"\x00payload"
    with open_uri(uri) as f:
        assert f.read() == b"\x00payload"
    # Atomic write leaves no temp file beside the artifact.
    assert [p.name for p in (tmp_path / "artifacts" / "a" / "b").iterdir()] == ["data.bin"]


def test_put_bytes_overwrites(tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.put_bytes("k", b"one")
    store.put_bytes("k", b"two")
    assert store.get_bytes("k") == b"two"


def test_missing_artifact_is_not_found_naming_it(tmp_path):
    store = ArtifactStore(str(tmp_path))
    assert not store.exists("nope/x.parquet")
    with pytest.raises(NotFound, match="nope/x.parquet"):
        store.get_bytes("nope/x.parquet")


def test_put_dir_copies_a_tree(tmp_path):
    src = tmp_path / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "adapter_config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"w")
    store = ArtifactStore(str(tmp_path / "artifacts"))
    store.put_dir(src, "adapters/x")
    assert store.get_bytes("adapters/x/adapter_config.json") == b"{}"
    assert store.get_bytes("adapters/x/sub/w.bin") == b"w"


def test_memory_protocol_uris_carry_the_protocol():
    store = ArtifactStore("memory://studio-test-artifacts")
    uri = store.put_bytes("x/y.bin", b"m")
    assert uri.startswith("memory://")
    with open_uri(uri) as f:
        assert f.read() == b"m"


def test_concurrent_writers_of_one_key_do_not_collide(tmp_path):
    store = ArtifactStore(str(tmp_path))
    data = b"same content" * 10_000
    barrier = threading.Barrier(8)

    def write(_):
        barrier.wait()
        return store.put_bytes("shared/data.parquet", data)

    with ThreadPoolExecutor(8) as pool:
        uris = set(pool.map(write, range(8)))
    assert len(uris) == 1
    assert store.get_bytes("shared/data.parquet") == data
    assert [p.name for p in (tmp_path / "shared").iterdir()] == ["data.parquet"]
