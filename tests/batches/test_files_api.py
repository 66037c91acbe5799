"""/v1/files in-process on SQLite and PostgreSQL: upload, list, retrieve, content, delete in
OpenAI's shapes (parsed with the openai SDK's own models), a file is its uploader's (another user
key gets 404, an admin sees it), and bad uploads are 4xx naming the fix."""

from __future__ import annotations

from openai.types import FileDeleted, FileObject

from tests.batches.conftest import bearer, jsonl, line, upload

DATA = jsonl([line("a", "hi"), line("b", "there")])


def test_upload_list_retrieve_content_delete(api, keys):
    alice = bearer(keys["alice"])
    file_id = upload(api, keys["alice"], DATA, "requests.jsonl")
    got = FileObject.model_validate(api.get(f"/v1/files/{file_id}", headers=alice).json())
    assert (got.id, got.bytes, got.filename, got.purpose, got.object) == \
        (file_id, len(DATA), "requests.jsonl", "batch", "file")
    assert file_id.startswith("file-") and got.created_at > 1_700_000_000

    content = api.get(f"/v1/files/{file_id}/content", headers=alice)
    assert content.status_code == 200 and content.content == DATA

    second = upload(api, keys["alice"], DATA)
    page = api.get("/v1/files", params={"limit": 1}, headers=alice).json()
    assert [f["id"] for f in page["data"]] == [second] and page["has_more"] is True  # newest first
    rest = api.get("/v1/files", params={"limit": 1, "after": second}, headers=alice).json()
    assert [f["id"] for f in rest["data"]] == [file_id] and rest["has_more"] is False
    oldest = api.get("/v1/files", params={"order": "asc"}, headers=alice).json()
    assert [FileObject.model_validate(f).id for f in oldest["data"]] == [file_id, second]

    gone = FileDeleted.model_validate(api.delete(f"/v1/files/{file_id}", headers=alice).json())
    assert gone.deleted and gone.id == file_id
    assert api.get(f"/v1/files/{file_id}", headers=alice).status_code == 404
    assert api.get(f"/v1/files/{file_id}/content", headers=alice).status_code == 404


def test_a_file_is_its_uploaders(api, keys):
    file_id = upload(api, keys["alice"], DATA)
    for who in ("bob", "svc"):  # another user, an application key: as if it did not exist
        other = bearer(keys[who])
        for method, path in (("GET", f"/v1/files/{file_id}"), ("GET", f"/v1/files/{file_id}/content"),
                             ("DELETE", f"/v1/files/{file_id}")):
            r = api.request(method, path, headers=other)
            assert r.status_code == 404, (who, method, path, r.text)
            assert r.json()["error"]["type"] == "not_found_error"
        assert api.get("/v1/files", headers=other).json()["data"] == []
    root = bearer(keys["root"])
    assert api.get(f"/v1/files/{file_id}", headers=root).status_code == 200
    assert [f["id"] for f in api.get("/v1/files", headers=root).json()["data"]] == [file_id]
    assert api.get(f"/v1/files/{file_id}").status_code == 401  # no key at all


def test_bad_uploads_are_4xx_naming_the_fix(api, keys, settings):
    alice = bearer(keys["alice"])
    r = api.post("/v1/files", files={"file": ("x.jsonl", DATA)}, data={"purpose": "fine-tune"},
                 headers=alice)
    assert r.status_code == 400 and "purpose=batch" in r.json()["error"]["message"], r.text
    r = api.post("/v1/files", files={"file": ("x.jsonl", DATA)}, headers=alice)
    assert r.status_code == 400 and "purpose" in r.json()["error"]["message"], r.text
    r = api.post("/v1/files", files={"file": ("x.jsonl", b"")}, data={"purpose": "batch"},
                 headers=alice)
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"], r.text
    r = api.post("/v1/files", json={"purpose": "batch"}, headers=alice)
    assert r.status_code == 415, r.text
    settings.batch_file_max_bytes = 64
    r = api.post("/v1/files", files={"file": ("x.jsonl", DATA)}, data={"purpose": "batch"},
                 headers=alice)
    assert r.status_code == 413 and "STUDIO_BATCH_FILE_MAX_BYTES" in r.json()["error"]["message"], r.text
    assert api.get("/v1/files", headers=alice).json()["data"] == []  # nothing kept of any of them
