"""The Ray Data read path gives the same snapshot, row numbers and reasons as the in-process path
(a real local Ray that advertises more logical CPUs than cores, so reads never wait)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.no_engine]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_ray_and_python_paths_agree(settings, tmp_path):
    from studio.data.ingest import ingest_path

    root = tmp_path / "in"
    root.mkdir()
    with (root / "a.jsonl").open("w") as f:
        for i in range(3000):
            f.write(json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n")
            if i == 9:
                f.write("{broken\n\n")
    pq.write_table(pa.Table.from_pylist([{"prompt": f"q{i}", "completion": "d"} for i in range(500)]),
                   root / "b.parquet")
    (root / "c.md").write_text("# not a prompt/completion row\n")
    import datasets  # a `save_to_disk` folder inside the directory is one source (in-process reader)

    datasets.Dataset.from_dict({"prompt": ["h1", "h2"], "completion": ["x", "y"]}).save_to_disk(str(root / "hf"))
    py = ingest_path(str(root), "py", settings, use_ray=False, check_roots=False)
    ray_ = ingest_path(str(root), "ray", settings, use_ray=True, check_roots=False)
    assert (py.engine, ray_.engine) == ("python", "ray")
    assert ray_.snapshot_id == py.snapshot_id and ray_.row_count == 3502
    assert [(r.file, r.row, r.reason) for r in ray_.rejected] == [(r.file, r.row, r.reason) for r in py.rejected]
    assert [(r.file, r.row) for r in ray_.rejected] == [("a.jsonl", 11), ("c.md", 1)]
