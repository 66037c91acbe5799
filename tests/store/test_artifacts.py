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


# ---------------------------------------------------------------- s3:// against a loopback S3 server
# moto's server mode, a real HTTP S3 API on a free port (tests/cluster/s3_server.py); the store finds
# it, and its credentials, through the standard AWS environment variables only.


@pytest.fixture(scope="module")
def s3():
    from tests.cluster.s3_server import local_s3

    with local_s3() as endpoint:
        yield endpoint


@pytest.fixture
def s3_store(s3) -> ArtifactStore:
    from tests.cluster.s3_server import new_bucket

    return ArtifactStore(f"s3://{new_bucket()}/studio")


def _objects(uri_prefix: str) -> dict[str, bytes]:
    """What the S3 server holds under a prefix, read with boto3 (not through the store)."""
    import boto3

    bucket, _, prefix = uri_prefix.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_s3_put_and_get_bytes_round_trip(s3_store: ArtifactStore):
    uri = s3_store.put_bytes("datasets/abc/data.parquet", b"\x00parquet")
    assert uri == f"s3://{s3_store.root}/datasets/abc/data.parquet"
    assert _objects(uri) == {uri.removeprefix("s3://").partition("/")[2]: b"\x00parquet"}
    assert s3_store.exists("datasets/abc/data.parquet")
    assert s3_store.get_bytes("datasets/abc/data.parquet") == b"\x00parquet"
    with open_uri(uri) as f:
        assert f.read() == b"\x00parquet"
    s3_store.put_bytes("datasets/abc/data.parquet", b"v2")
    assert s3_store.get_bytes("datasets/abc/data.parquet") == b"v2"


def test_s3_missing_artifact_is_not_found(s3_store: ArtifactStore):
    assert not s3_store.exists("nope/x.parquet")
    with pytest.raises(NotFound, match=r"s3://.*/nope/x.parquet"):
        s3_store.get_bytes("nope/x.parquet")


def test_s3_missing_bucket_is_a_clear_error(s3):
    from studio.errors import StudioError

    store = ArtifactStore("s3://studio-no-such-bucket-4f1c/studio")
    with pytest.raises(StudioError, match="bucket does not exist") as e:
        store.put_bytes("k", b"x")
    assert "STUDIO_ARTIFACTS_URI" in str(e.value)


def test_s3_adapter_dir_to_store_and_back_to_a_replica_cache(s3_store: ArtifactStore, tmp_path):
    """put_dir (what training registers) → fetch_adapter (what a serving replica runs before the
    engine loads the adapter): the same files land in the local cache, once."""
    from studio.models.adapters import fetch_adapter

    src = tmp_path / "adapter"
    (src / "nested").mkdir(parents=True)
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(b"\x01" * 4096)
    (src / "nested" / "tokenizer.json").write_text("{}")
    uri = s3_store.put_dir(src, "models/rev/3-1")
    assert uri.startswith("s3://") and len(_objects(uri)) == 3

    cache = tmp_path / "replica-cache"
    local = fetch_adapter(uri, cache)
    assert local.parent == cache
    got = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert got == {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert fetch_adapter(uri, cache) == local  # version URIs never change: the cache is reused
    assert [p.name for p in cache.iterdir()] == [local.name]  # no temp dirs left behind
    with pytest.raises(NotFound, match="does not exist"):
        fetch_adapter(s3_store.uri("models/rev/404-1"), cache)


def test_s3_dataset_snapshot_write_and_read(s3_store: ArtifactStore, tmp_path):
    """The real ingest writes the snapshot's Parquet to S3; the reader the trainers use reads it."""
    import json

    from studio.data.ingest import ingest_file
    from studio.data.snapshots import load_split, resolve_snapshot
    from studio.settings import StudioSettings
    from studio.store.db import get_engine, init_db, session_scope

    settings = StudioSettings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'studio.db'}",
                              artifacts_uri=f"s3://{s3_store.root}", mlflow_uri=None, redis_url=None)
    init_db(settings.db_url)
    rows = [{"prompt": f"reverse: {i} {i + 1}", "completion": f"{i + 1} {i}"} for i in range(20)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = ingest_file(data, "rev", settings)
    try:
        assert report.uri.startswith(f"s3://{s3_store.root}/datasets/")
        assert report.uri.removeprefix("s3://").partition("/")[2] in _objects(report.uri)
        with session_scope(settings.db_url) as s:
            snap = resolve_snapshot(s, "rev@1").snapshot
            assert snap.uri == report.uri
        table = load_split(report.uri, "all")
        assert sorted(table.column("completion").to_pylist()) == sorted(r["completion"] for r in rows)
        assert not (tmp_path / "home" / "artifacts").exists(), "nothing may land on local disk"
    finally:
        get_engine(settings.db_url).dispose()
        get_engine.cache_clear()


def test_s3_sees_what_another_process_wrote_after_a_listing(s3_store: ArtifactStore, tmp_path):
    """s3fs caches directory listings for the life of a process. A long-lived replica that listed
    the versions of a model must still fetch a version a training job (another process, here a plain
    boto3 client) registered afterwards — and read a snapshot another replica ingested."""
    import boto3

    from studio.models.adapters import fetch_adapter

    bucket, _, root = s3_store.root.partition("/")
    other_writer = boto3.client("s3")
    other_writer.put_object(Bucket=bucket, Key=f"{root}/models/m/1-1/adapter_config.json", Body=b"{}")
    cache = tmp_path / "cache"
    fetch_adapter(s3_store.uri("models/m/1-1"), cache)
    assert len(s3_store.fs.ls(s3_store.path("models/m"))) == 1  # the listing is now cached
    assert not s3_store.exists("datasets/x/data.parquet")

    other_writer.put_object(Bucket=bucket, Key=f"{root}/models/m/2-1/adapter_config.json", Body=b'{"v": 2}')
    other_writer.put_object(Bucket=bucket, Key=f"{root}/datasets/x/data.parquet", Body=b"rows")
    assert (fetch_adapter(s3_store.uri("models/m/2-1"), cache) / "adapter_config.json").read_bytes() == b'{"v": 2}'
    assert s3_store.exists("datasets/x/data.parquet")
    assert s3_store.get_bytes("datasets/x/data.parquet") == b"rows"
    with open_uri(s3_store.uri("datasets/x/data.parquet")) as f:
        assert f.read() == b"rows"
