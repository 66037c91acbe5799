"""Ingest of directories, documents, HF datasets on disk and fsspec URLs: every broken file or row
gets its own reason, good ones are kept, and paths outside the allowed roots are refused."""

from __future__ import annotations

import pytest

from studio.data.ingest import ingest_path
from studio.data.snapshots import load_split, resolve_snapshot
from studio.data.sources import html_text
from studio.data.tools import dropped_rows
from studio.errors import StudioError
from studio.store.db import session_scope
from tests.data.docs import HTML, jsonl, mixed_directory, text_pdf


@pytest.fixture
def settings(settings, tmp_path):
    """Server-side paths read only under STUDIO_DATA_ROOTS: here tmp_path, where the tests write."""
    return settings.model_copy(update={"data_roots": str(tmp_path)})


def rows_of(settings, ref: str) -> list[dict]:
    with session_scope(settings.db_url) as s:
        return load_split(resolve_snapshot(s, ref).snapshot.uri).to_pylist()


def test_a_mixed_directory_ingests_with_a_reason_per_broken_file(settings, tmp_path):
    root = mixed_directory(tmp_path / "docs")
    report = ingest_path(str(root), "docs", settings)
    assert report.kind == "document" and report.engine == "python"
    texts = {r["source"]: r["text"] for r in rows_of(settings, "docs")}
    assert sorted(texts) == ["notes/tides.md", "paper.pdf", "plain.txt", "volcanoes.html"]
    assert "Glaciers carve valleys." in texts["paper.pdf"]
    assert texts["volcanoes.html"].startswith("Volcanoes") and "not text" not in texts["volcanoes.html"]
    assert "Magma rises through the crust & erupts as lava." in texts["volcanoes.html"]
    reasons = {r.file: r.reason for r in report.rejected}
    assert sorted(reasons) == ["cut.pdf", "empty.md", "fake.csv", "locked.pdf", "scan.pdf", "unknown.bin"]
    assert "truncated or damaged" in reasons["cut.pdf"]
    assert "encrypted" in reasons["locked.pdf"]
    assert "no extractable text" in reasons["scan.pdf"] and "OCR" in reasons["scan.pdf"]
    assert reasons["empty.md"].startswith("the file is empty")
    assert "claims to be CSV but holds binary data" in reasons["fake.csv"]
    assert "unknown format" in reasons["unknown.bin"]
    # All of them are kept with the version, for `studio data show docs --dropped`.
    dropped = dropped_rows(settings, "docs")
    assert dropped["total"] == 6 and {r["file"] for r in dropped["rows"]} == set(reasons)


def test_documents_as_text_rows_for_cpt(settings, tmp_path):
    root = mixed_directory(tmp_path / "docs")
    report = ingest_path(str(root), "cpt", settings, kind="text")
    assert report.kind == "text" and report.row_count == 4
    assert all(set(r) == {"text"} for r in rows_of(settings, "cpt"))


def test_directory_of_row_files_reports_file_and_row(settings, tmp_path):
    root = tmp_path / "rows"
    root.mkdir()
    jsonl(root / "a.jsonl", [{"question": "q1", "answer": "a1"}, "{broken", {"question": "q2", "answer": "a2"}])
    jsonl(root / "b.jsonl", [{"question": "q3"}])
    report = ingest_path(str(root), "qa", settings, column_map={"prompt": "question", "completion": "answer"})
    assert (report.kind, report.row_count) == ("prompt_completion", 2)
    assert [(r.file, r.row) for r in report.rejected] == [("a.jsonl", 2), ("b.jsonl", 1)]
    assert report.rejected[1].reason.startswith("missing column 'completion'")


def test_single_binary_csv_is_refused_naming_it(settings, tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"prompt,completion\n\x00\x01\x02binary")
    with pytest.raises(StudioError, match=r"data.csv claims to be CSV but holds binary data \(a NUL byte at offset 18\)"):
        ingest_path(str(path), "x", settings)


def test_paths_outside_the_roots_or_with_dotdot_are_refused(settings, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    jsonl(outside / "x.jsonl", [{"text": "secret"}])
    jsonl(allowed / "ok.jsonl", [{"text": "fine"}])
    locked = settings.model_copy(update={"data_roots": str(allowed)})
    with pytest.raises(StudioError, match="outside the allowed data roots") as e:
        ingest_path(str(outside / "x.jsonl"), "x", locked)
    assert e.value.status_code == 403 and "STUDIO_DATA_ROOTS" in e.value.fix
    with pytest.raises(StudioError, match=r"contains '\.\.'"):
        ingest_path(f"{allowed}/../outside/x.jsonl", "x", locked)
    with pytest.raises(StudioError, match="outside the allowed data roots"):
        ingest_path("/etc/passwd", "x", locked)
    assert ingest_path(str(allowed / "ok.jsonl"), "ok", locked).row_count == 1


def test_fsspec_url_under_an_allowed_prefix(settings):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/studio-test-src/a.jsonl", b'{"text": "from memory"}\n')
    fs.pipe("/studio-test-src/b.md", b"# Doc\nbody\n")
    with pytest.raises(StudioError, match="outside the allowed data roots"):
        ingest_path("memory://studio-test-src", "m", settings)
    open_roots = settings.model_copy(update={"data_roots": "memory://studio-test-src"})
    report = ingest_path("memory://studio-test-src", "m", open_roots, kind="text")
    assert sorted(r["text"] for r in rows_of(settings, "m")) == ["# Doc\nbody\n", "from memory"]
    assert report.rejected_count == 0


def test_hf_dataset_saved_to_disk(settings, tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"question": ["q1", "q2"], "answer": ["a1", "a2"]}),
        "test": datasets.Dataset.from_dict({"question": ["q3"], "answer": [""]}),
    })
    dd.save_to_disk(str(tmp_path / "hf"))
    report = ingest_path(str(tmp_path / "hf"), "hf", settings,
                         column_map={"prompt": "question", "completion": "answer"})
    assert report.row_count == 2 and report.rejected_count == 1
    assert report.rejected[0].file == "hf[test]" and "is empty" in report.rejected[0].reason


def test_same_content_from_a_pdf_and_its_directory_is_one_snapshot(settings, tmp_path):
    root = tmp_path / "one"
    root.mkdir()
    (root / "p.pdf").write_bytes(text_pdf(["Same words."]))
    a = ingest_path(str(root), "p1", settings)
    b = ingest_path(str(root / "p.pdf"), "p2", settings)
    assert a.snapshot_id == b.snapshot_id


def test_html_text_drops_scripts_and_keeps_blocks():
    assert html_text(HTML) == ("Volcanoes\n\nMagma rises through the crust & erupts as lava.\n\n"
                               "Shield volcanoes are broad.\n\nStratovolcanoes are steep.")


def test_a_directory_of_every_format_with_broken_files_keeps_the_good_rows(settings, tmp_path):
    """The issue's "done when": JSONL, CSV, Parquet, an HF dataset on disk, text, Markdown, HTML and
    PDF in one directory, with malformed lines, a 0-byte file, image-only / encrypted / truncated
    PDFs and a binary file claiming to be CSV — every good row kept, every bad one with a reason."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = mixed_directory(tmp_path / "corpus")  # documents, good and broken
    jsonl(root / "rows.jsonl", [{"text": "jsonl one"}, "{broken", [1, 2], {"text": ""}, {"text": "jsonl two"}])
    (root / "table.csv").write_text('text,extra\n"csv one",x\n"csv two",y,surplus\n"csv three",z\n')
    pq.write_table(pa.table({"text": ["parquet one", None, "parquet two"]}), root / "cols.parquet")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["hf one", "hf two"]}),
        "test": datasets.Dataset.from_dict({"text": ["   "]}),
    }).save_to_disk(str(root / "hfdata"))
    (root / "empty.jsonl").write_bytes(b"")

    report = ingest_path(str(root), "corpus", settings, kind="text")
    texts = sorted(r["text"] for r in rows_of(settings, "corpus"))
    assert [t for t in texts if " " in t and t.split()[0] in ("jsonl", "csv", "parquet", "hf")] == [
        "csv one", "csv three", "hf one", "hf two", "jsonl one", "jsonl two", "parquet one",
        "parquet two"]
    assert report.row_count == 8 + 4  # and the four readable documents
    reasons = {(r.file, r.row): r.reason for r in report.rejected}
    assert "broken JSON" in reasons[("rows.jsonl", 2)]
    assert "must be a JSON object, got list" in reasons[("rows.jsonl", 3)]
    assert "is empty" in reasons[("rows.jsonl", 4)]
    assert "more fields than the header" in reasons[("table.csv", 2)]
    assert "must be a string, got NoneType" in reasons[("cols.parquet", 2)]
    assert "is empty" in reasons[("hfdata[test]", 1)]
    assert reasons[("empty.jsonl", 0)].startswith("the file is empty")
    assert "claims to be CSV but holds binary data" in reasons[("fake.csv", 0)]
    for pdf, why in [("cut.pdf", "truncated"), ("locked.pdf", "encrypted"), ("scan.pdf", "OCR")]:
        assert why in reasons[(pdf, 1)], reasons[(pdf, 1)]
    # No file of the HF folder (arrow shards, state.json) is read as a file of its own.
    assert not [f for f, _ in reasons if f.startswith("hfdata/")]
    assert report.rejected_count == len(reasons) == 13
    assert dropped_rows(settings, "corpus")["total"] == 13
