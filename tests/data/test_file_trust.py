"""Files (docs/security.md): a non-admin key names no server path, an admin only paths under
STUDIO_DATA_ROOTS without '..', '%2e%2e', hidden components or links out; bad sources are a fast
400; uploads are capped, malformed ones are a 400, and a broken or abandoned upload leaves nothing
behind; exports are downloads. Every exploit of issue 20 against a real app and database."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from starlette.requests import ClientDisconnect

from studio.api.app import create_app
from studio.data.snapshots import load_split, resolve_snapshot
from studio.data.upload import receive_upload
from studio.keys import create_key
from studio.store.artifacts import ArtifactStore
from studio.store.db import session_scope
from tests.api.checks import assert_problem, bearer

ROWS = [{"prompt": f"reverse: {i}", "completion": str(i)[::-1]} for i in range(12)]


@pytest.fixture
def roots(settings, tmp_path) -> Path:
    """The one data root of these tests (STUDIO_DATA_ROOTS), holding a readable file."""
    root = tmp_path / "shared"
    root.mkdir()
    (root / "ok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root


@pytest.fixture
def app_settings(settings, roots):
    return settings.model_copy(update={"data_roots": str(roots), "upload_max_bytes": 64 * 1024})


@pytest.fixture
def client(app_settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as c:
        yield c


def _key(settings, name: str, role: str) -> str:
    with session_scope(settings.db_url) as s:
        return create_key(s, name, role)[0]


@pytest.fixture
def admin(settings) -> str:
    return _key(settings, "root", "admin")


@pytest.fixture
def user(settings) -> str:
    return _key(settings, "alice", "user")


@pytest.fixture
def outside(tmp_path) -> Path:
    """A secret outside the roots (stands in for ~/.ssh/id_rsa)."""
    secret = tmp_path / "home" / "secret.jsonl"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text(json.dumps({"text": "the server's secret"}) + "\n")
    return secret


def ingest(client, key, source: str, name: str = "x"):
    return client.post("/api/datasets/ingest", headers=bearer(key), json={"source": source, "name": name})


def names(client, key) -> list[str]:
    return [d["name"] for d in client.get("/api/datasets", headers=bearer(key)).json()]


def files_under(path: str | Path) -> list[str]:
    """Everything under `path`. os.walk, not rglob: the server deletes folders while this looks
    (an upload's folder goes between listing its parent and reading it), and os.walk skips those."""
    found = []
    for folder, dirs, files in os.walk(path):
        found += [os.path.join(folder, name) for name in dirs + files]
    return sorted(found)


# --- naming server paths ------------------------------------------------------------------------


def test_a_user_key_names_no_server_path(client, user, roots, outside):
    for source in (str(roots / "ok.jsonl"), str(outside), "~/.ssh/id_rsa", "s3://bucket/x.jsonl"):
        body = assert_problem(ingest(client, user, source), 403, "only an admin key")
        assert "POST /api/datasets" in body["fix"] and "studio data ingest" in body["fix"]
    assert names(client, user) == []


def test_admin_paths_stay_under_the_roots(client, admin, roots, outside):
    assert ingest(client, admin, str(roots / "ok.jsonl"), "ok").status_code == 201
    assert_problem(ingest(client, admin, str(outside)), 403, "outside the allowed data roots")
    assert_problem(ingest(client, admin, f"{roots}/../home/secret.jsonl"), 403, "contains '..'")
    assert_problem(ingest(client, admin, f"{roots}/%2e%2e/home/secret.jsonl"), 403,
                   "contains '..' once URL-decoded")
    assert_problem(ingest(client, admin, f"{roots}/%252E%252E/home/secret.jsonl"), 403, "'..'")
    assert names(client, admin) == ["ok"]


def test_a_link_under_a_root_that_points_outside_is_refused(client, admin, roots, outside):
    (roots / "innocent.jsonl").symlink_to(outside)
    assert_problem(ingest(client, admin, str(roots / "innocent.jsonl")), 403, "outside the allowed data roots")
    (roots / "folder").mkdir()  # a directory whose files are links out: refused, not read
    (roots / "folder" / "a.jsonl").write_text(json.dumps({"text": "fine"}) + "\n")
    (roots / "folder" / "b.jsonl").symlink_to(outside)
    assert_problem(ingest(client, admin, str(roots / "folder")), 403, "outside the allowed data roots")
    assert names(client, admin) == []


def test_hidden_components_are_refused(client, admin, roots):
    for hidden in (".ssh/id_rsa.jsonl", ".env.jsonl", "a/.git/config.jsonl"):
        path = roots / hidden
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"text": "secret"}) + "\n")
        assert_problem(ingest(client, admin, str(path)), 403, "hidden component")
    assert_problem(ingest(client, admin, f"{roots}/%2essh/id_rsa.jsonl"), 403, "hidden component")
    (roots / "visible.jsonl").symlink_to(roots / ".ssh" / "id_rsa.jsonl")  # a link into a hidden folder
    assert_problem(ingest(client, admin, str(roots / "visible.jsonl")), 403, "hidden component")
    (roots / ".hidden").mkdir()  # a link inside a hidden folder, pointing at a visible file
    (roots / ".hidden" / "link.jsonl").symlink_to(roots / "ok.jsonl")
    assert_problem(ingest(client, admin, str(roots / ".hidden" / "link.jsonl")), 403, "hidden component")
    assert names(client, admin) == []


def test_a_root_reached_through_a_link_or_a_dotted_name_is_still_the_root(client, admin, roots, tmp_path):
    """Only components below the root count: the default root is ./.studio."""
    (tmp_path / ".alias").symlink_to(roots)
    assert ingest(client, admin, str(tmp_path / ".alias" / "ok.jsonl"), "ok").status_code == 201
    (roots / "sub").mkdir()
    (roots / "sub" / "x.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    assert_problem(ingest(client, admin, str(tmp_path / ".alias" / ".." / "shared" / "sub" / "x.jsonl")),
                   403, "'..'")
    (tmp_path / ".alias2").symlink_to(roots / "sub")
    assert ingest(client, admin, str(tmp_path / ".alias2" / "x.jsonl"), "x").status_code == 201


# Directory reads during a request, from Python's audit events (os.scandir, os.listdir, glob.glob:
# what os.walk, Path.rglob and glob do), recorded only while a test sets the list.
_DIR_READS: list[tuple[str, tuple]] | None = None


def _record_dir_reads(event: str, args: tuple) -> None:
    if _DIR_READS is not None and event in ("os.scandir", "os.listdir", "glob.glob"):
        _DIR_READS.append((event, args))


sys.addaudithook(_record_dir_reads)


@pytest.mark.parametrize("source, detail", [("", "is empty"), ("   ", "is empty"),
                                            ("data/ok.jsonl", "is not absolute"),
                                            ("ok.jsonl", "is not absolute")])
def test_empty_or_relative_sources_are_a_400_that_reads_no_directory(client, admin, source, detail):
    """An empty source used to walk the working directory; the refusal reads none (asserted on
    what the request did, not on how long it took)."""
    global _DIR_READS
    _DIR_READS = []
    try:
        assert_problem(ingest(client, admin, source), 400, detail)
        reads = list(_DIR_READS)
    finally:
        _DIR_READS = None
    assert reads == [], reads


def test_a_directory_where_a_file_is_needed_is_a_400(client, admin, roots):
    (roots / "folder").mkdir()
    assert ingest(client, admin, str(roots / "ok.jsonl"), "ok").status_code == 201
    r = client.post("/api/datasets/ok/export", headers=bearer(admin),
                    json={"path": str(roots / "folder"), "format": "jsonl"})
    assert_problem(r, 400, "already exists")


# --- exports ------------------------------------------------------------------------------------


def export(client, key, path: str, ref: str = "ok", fmt: str = "jsonl"):
    return client.post(f"/api/datasets/{ref}/export", headers=bearer(key), json={"path": path, "format": fmt})


def test_a_user_key_cannot_export_to_a_server_path(client, admin, user, roots, tmp_path):
    assert ingest(client, admin, str(roots / "ok.jsonl"), "ok").status_code == 201
    tmp_target = Path(tempfile.gettempdir()) / f"studio-export-{os.getpid()}-{time.time_ns()}.jsonl"
    profile = Path.home() / ".bash_profile"
    had_profile = profile.exists()
    for target in (str(tmp_target), "~/.bash_profile", str(profile), str(roots / "mine.jsonl")):
        body = assert_problem(export(client, user, target), 403, "only an admin key")
        assert "GET /api/datasets/ok/export" in body["fix"]
    assert not tmp_target.exists() and not (roots / "mine.jsonl").exists()
    assert profile.exists() == had_profile


def test_admin_exports_only_under_the_roots(client, admin, roots, tmp_path):
    assert ingest(client, admin, str(roots / "ok.jsonl"), "ok").status_code == 201
    outside = tmp_path / "elsewhere" / "x.jsonl"
    assert_problem(export(client, admin, str(outside)), 403, "outside the allowed data roots")
    assert_problem(export(client, admin, str(roots / ".bash_profile")), 403, "hidden component")
    assert_problem(export(client, admin, f"{roots}/../x.jsonl"), 403, "'..'")
    (roots / "out.jsonl").symlink_to(tmp_path / "planted.jsonl")  # a dangling link out of the root
    assert_problem(export(client, admin, str(roots / "out.jsonl")), 403, "outside the allowed data roots")
    assert not outside.exists() and not (tmp_path / "planted.jsonl").exists()
    assert not (roots / ".bash_profile").exists()
    r = export(client, admin, str(roots / "exports" / "ok.jsonl"))
    assert r.status_code == 200, r.text
    assert [json.loads(x) for x in (roots / "exports" / "ok.jsonl").read_text().splitlines()] == ROWS


def test_the_download_export_holds_the_snapshot_rows(client, app_settings, user):
    body = "".join(json.dumps(r) + "\n" for r in ROWS)
    r = client.post("/api/datasets", headers=bearer(user), data={"name": "digits"},
                    files={"file": ("d.jsonl", body.encode(), "application/octet-stream")})
    assert r.status_code == 201, r.text
    with session_scope(app_settings.db_url) as s:
        uri = resolve_snapshot(s, "digits").snapshot.uri
    stored = load_split(uri).to_pylist()

    got = client.get("/api/datasets/digits/export", headers=bearer(user))
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/jsonl")
    assert got.headers["content-disposition"] == 'attachment; filename="digits-v1.jsonl"'
    assert [json.loads(line) for line in got.text.splitlines()] == stored == ROWS

    got = client.get("/api/datasets/digits@1/export", headers=bearer(user), params={"format": "parquet"})
    assert got.status_code == 200 and got.headers["content-disposition"].endswith('"digits-v1.parquet"')
    assert pq.read_table(io.BytesIO(got.content)).to_pylist() == stored

    split = client.get("/api/datasets/digits/export", headers=bearer(user),
                       params={"split": "validation", "validation_ratio": 0.25, "seed": 3})
    assert split.headers["content-disposition"].endswith('"digits-v1-validation.jsonl"')
    expected = load_split(uri, "validation", 0.25, 3).to_pylist()
    assert [json.loads(line) for line in split.text.splitlines()] == expected and len(expected) == 3

    assert_problem(client.get("/api/datasets/digits/export", headers=bearer(user), params={"format": "hf"}),
                   400, "cannot be downloaded as one file")
    assert_problem(client.get("/api/datasets/nope/export", headers=bearer(user)), 404)


# --- tokenizers -----------------------------------------------------------------------------------


def test_tokenizers_name_models_the_studio_knows(client, app_settings, admin, user, roots, outside):
    from studio.models.tiny import TinyModelSpec, build_tokenizer

    assert ingest(client, admin, str(roots / "ok.jsonl"), "ok").status_code == 201
    stray = outside.parent / "tok"
    build_tokenizer(TinyModelSpec()).save_pretrained(stray)
    known = app_settings.models_dir / "tiny-tok"
    build_tokenizer(TinyModelSpec()).save_pretrained(known)

    def stats(key, tokenizer):
        return client.get("/api/datasets/ok/stats", headers=bearer(key), params={"tokenizer": tokenizer})

    for path in (str(stray), "/etc", f"{known}/../../../home/tok", "./tok"):
        assert stats(user, path).status_code == 403, path
    assert_problem(stats(admin, str(stray)), 403, "outside the allowed data roots")
    for name in (str(known), "tiny-tok"):
        r = stats(user, name)
        assert r.status_code == 200 and r.json()["unit"] == "tokens", r.text
    curate = {"source": "ok", "name": "short",
              "steps": [{"type": "length", "tokenizer": str(stray), "max_tokens": 50}]}
    assert_problem(client.post("/api/datasets/curate", headers=bearer(user), json=curate), 403, "tokenizer")
    curate["steps"][0]["tokenizer"] = "tiny-tok"
    assert client.post("/api/datasets/curate", headers=bearer(user), json=curate).status_code == 201


# --- uploads ------------------------------------------------------------------------------------


def uploads(settings) -> list[str]:
    return files_under(Path(ArtifactStore(settings.artifacts).path("uploads")))


@pytest.fixture(autouse=True)
def own_temp_dir(tmp_path, monkeypatch) -> Path:
    """This process's temp directory, so other test sessions' temp files don't count."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def temp_files() -> list[str]:
    return files_under(tempfile.gettempdir())


def raw(client, key, body: bytes, boundary: str = "b"):
    return client.post("/api/datasets", headers={**bearer(key),
                       "content-type": f"multipart/form-data; boundary={boundary}"}, content=body)


def part(name: str, value: bytes, filename: str | None = None, boundary: bytes = b"b") -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return (b"--" + boundary + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n\r\n" + value + b"\r\n")


GOOD_FILE = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS)


def test_malformed_multipart_is_a_400_and_leaves_nothing(client, app_settings, user):
    before = temp_files()
    assert before == []
    well_formed = part("name", b"d") + part("file", GOOD_FILE, "d.jsonl") + b"--b--\r\n"
    cases = {
        "wrong boundary": raw(client, user, well_formed, boundary="other"),
        "garbage": raw(client, user, b"\x00\xffnot multipart at all"),
        "no closing boundary": raw(client, user, part("name", b"d") + part("file", GOOD_FILE, "d.jsonl")[:-40]),
        "boundary too long": raw(client, user, well_formed, boundary="x" * 300),
        "broken part headers": raw(client, user, b"--b\r\nContent-Disposition form-data\r\n\r\nx\r\n--b--\r\n"),
    }
    for what, r in cases.items():
        assert r.status_code == 400, (what, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), what
    assert uploads(app_settings) == [] and temp_files() == before
    assert names(client, user) == []
    assert raw(client, user, well_formed).status_code == 201  # the same body, well formed, is fine


def test_upload_caps_on_files_and_fields(client, app_settings, user):
    two_files = part("name", b"d") + part("file", GOOD_FILE, "a.jsonl") + part("file", GOOD_FILE, "b.jsonl")
    assert_problem(raw(client, user, two_files + b"--b--\r\n"), 400, "more than one file")
    other = part("name", b"d") + part("file", GOOD_FILE, "a.jsonl") + part("extra", GOOD_FILE, "b.jsonl")
    assert_problem(raw(client, user, other + b"--b--\r\n"), 400, "a file in form field 'extra'")
    many = part("file", GOOD_FILE, "a.jsonl") + b"".join(part(f"f{i}", b"v") for i in range(9))
    assert_problem(raw(client, user, many + b"--b--\r\n"), 400, "more than 8 form fields")
    big_field = part("name", b"n" * (65 * 1024)) + part("file", GOOD_FILE, "a.jsonl")
    assert_problem(raw(client, user, big_field + b"--b--\r\n"), 400, "over 65536 bytes")
    assert uploads(app_settings) == [] and names(client, user) == []


def test_an_abandoned_upload_leaves_nothing_behind(app_settings):
    """The client goes away mid-body: Starlette's stream raises ClientDisconnect; the partial file
    is removed with its folder, and no temporary file stays."""
    store = ArtifactStore(app_settings.artifacts)
    before, temps = uploads(app_settings), temp_files()

    async def body():
        yield part("name", b"d") + b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n'
        yield GOOD_FILE
        raise ClientDisconnect()

    with pytest.raises(ClientDisconnect):
        asyncio.run(receive_upload(body(), "multipart/form-data; boundary=b", store, 2**20, {".jsonl"}))
    assert uploads(app_settings) == before == [] and temp_files() == temps == []

    async def cancelled():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n' + GOOD_FILE
        raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(receive_upload(cancelled(), "multipart/form-data; boundary=b", store, 2**20, {".jsonl"}))
    assert uploads(app_settings) == []


def test_a_client_that_hangs_up_mid_upload_leaves_nothing(app_settings, user):
    """Over a real socket (uvicorn on loopback): headers promise 1 MiB, a part of the file is sent,
    the client closes the connection. The server drops what it had written."""
    import socket

    from tests.loopback import ServerThread

    server = ServerThread(create_app(app_settings)).start()
    try:
        head = part("name", b"gone") + (b'--b\r\nContent-Disposition: form-data; name="file"; '
                                         b'filename="d.jsonl"\r\n\r\n')
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall((f"POST /api/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user}\r\n"
                          "Content-Type: multipart/form-data; boundary=b\r\n"
                          f"Content-Length: {2**20}\r\n\r\n").encode() + head + GOOD_FILE * 20)
            deadline = time.monotonic() + 10  # the part file exists while the body streams
            while not uploads(app_settings) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert uploads(app_settings), "the upload never reached the artifact store"
        deadline = time.monotonic() + 10
        while uploads(app_settings) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uploads(app_settings) == [] and temp_files() == []
    finally:
        server.stop()

