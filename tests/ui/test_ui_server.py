"""The UI's server side, with FastAPI's TestClient on a real database: /ui serves the page and its
assets without a key (they hold no data), every module the page imports exists, and the API
additions the pages rely on — server-side pages of datasets and versions, and ingest with a column
mapping — work and fail in words."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient

from studio import __version__
from studio.data.ingest import ingest_file
from studio.ui import STATIC
from tests.api.checks import assert_problem, bearer


def test_ui_page_is_served_without_a_key_and_the_api_still_needs_one(client: TestClient):
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    r = client.get("/ui/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert f"/ui/static/app.js?v={__version__}" in r.text and "{{version}}" not in r.text
    assert r.headers["cache-control"] == "no-store"
    assert_problem(client.get("/api/jobs"), 401, "missing API key")


def test_every_module_the_page_imports_is_served(client: TestClient):
    """A missing or misnamed module would blank the page in a browser; catch it without one."""
    seen, todo = set(), ["app.js"]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        r = client.get(f"/ui/static/{rel}")
        assert r.status_code == 200, rel
        assert "javascript" in r.headers["content-type"], (rel, r.headers["content-type"])
        base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        for spec in re.findall(r'^import .* from "(\.[^"]+)";$', r.text, flags=re.M):
            parts = (base + spec).split("/")
            out: list[str] = []
            for p in parts:
                if p == "..":
                    out.pop()
                elif p not in (".", ""):
                    out.append(p)
            todo.append("/".join(out))
    on_disk = {str(p.relative_to(STATIC)) for p in STATIC.rglob("*.js")}
    assert seen == on_disk, f"modules never imported or missing: {seen ^ on_disk}"
    assert client.get("/ui/static/style.css").status_code == 200
    assert client.get("/ui/static/nope.js").status_code == 404


def _ingest(settings, tmp_path, name: str, n: int) -> None:
    path = tmp_path / f"{name}-{n}.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": f"c{n}-{i}"}) + "\n" for i in range(n)))
    ingest_file(path, name, settings)


def test_datasets_and_versions_are_paged_on_the_server(client, settings, admin_key, tmp_path):
    for name in ("a", "b", "c"):
        _ingest(settings, tmp_path, name, 1)
    for n in (2, 3):
        _ingest(settings, tmp_path, "a", n)
    auth = bearer(admin_key)
    assert [d["name"] for d in client.get("/api/datasets", headers=auth).json()] == ["a", "b", "c"]
    page = client.get("/api/datasets?limit=2&offset=1", headers=auth).json()
    assert [(d["name"], d["version"]) for d in page] == [("b", 1), ("c", 1)]
    assert client.get("/api/datasets?limit=2&offset=3", headers=auth).json() == []

    newest = client.get("/api/datasets/a?newest_first=true&limit=2", headers=auth).json()["versions"]
    assert [v["version"] for v in newest] == [3, 2]
    oldest = client.get("/api/datasets/a?limit=2&offset=2", headers=auth).json()["versions"]
    assert [v["version"] for v in oldest] == [3]
    # Past the end of a name that exists: an empty page, not "no such dataset".
    assert client.get("/api/datasets/a?limit=2&offset=9", headers=auth).json()["versions"] == []
    assert_problem(client.get("/api/datasets/zzz?limit=2", headers=auth), 404, "no dataset named 'zzz'")
    assert_problem(client.get("/api/datasets?limit=0", headers=auth), 422, "limit")


def test_upload_with_a_column_mapping(client, admin_key):
    rows = "".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(3))
    files = {"file": ("qa.jsonl", rows.encode(), "application/octet-stream")}
    r = client.post("/api/datasets", headers=bearer(admin_key), files=files,
                    data={"name": "qa", "column_map": json.dumps({"prompt": "question", "completion": "answer"})})
    assert r.status_code == 201, r.text
    assert (r.json()["kind"], r.json()["row_count"], r.json()["rejected_count"]) == ("prompt_completion", 3, 0)
    got = client.get("/api/datasets/qa/rows", headers=bearer(admin_key)).json()["rows"]
    assert got[0] == {"prompt": "q0", "completion": "a0"}

    # Without the mapping the same file is refused, naming the columns and the fix.
    r = client.post("/api/datasets", headers=bearer(admin_key), files=files, data={"name": "qa2"})
    assert_problem(r, 400, "question", "answer")
    r = client.post("/api/datasets", headers=bearer(admin_key), files=files,
                    data={"name": "qa3", "column_map": '["prompt"]'})
    body = assert_problem(r, 400, "column_map", "not a JSON object")
    assert "completion" in body["fix"]


def test_models_and_versions_are_paged_on_the_server(client, settings, admin_key):
    from studio.registry.versions import register_version
    from studio.store.db import session_scope

    with session_scope(settings.db_url) as s:
        for name, n in (("m-a", 3), ("m-b", 1), ("m-c", 2)):
            for _ in range(n):
                register_version(s, name=name, base_model="tiny", method="sft", adapter_type="lora", uri="/x")
    auth = bearer(admin_key)
    everything = client.get("/api/models", headers=auth).json()
    assert [(m["name"], m["versions"], m["latest_version"]) for m in everything] == [
        ("m-a", 3, 3), ("m-b", 1, 1), ("m-c", 2, 2)]
    page = client.get("/api/models?limit=1&offset=1", headers=auth).json()
    assert [(m["name"], m["versions"]) for m in page] == [("m-b", 1)]
    newest = client.get("/api/models/m-a?newest_first=true&limit=2", headers=auth).json()["versions"]
    assert [v["ref"] for v in newest] == ["m-a@3", "m-a@2"]
    assert [v["ref"] for v in client.get("/api/models/m-a?limit=2&offset=2", headers=auth).json()["versions"]] == ["m-a@3"]
    assert client.get("/api/models/m-a?limit=2&offset=5", headers=auth).json()["versions"] == []
    assert_problem(client.get("/api/models/nope?limit=2&offset=5", headers=auth), 404, "no registered model named 'nope'")


def _key_id(settings, name: str) -> int:
    from sqlalchemy import select

    from studio.store.db import session_scope
    from studio.store.models import ApiKey

    with session_scope(settings.db_url) as s:
        return s.scalar(select(ApiKey.id).where(ApiKey.name == name))


def test_the_fields_the_pages_decide_on(client, settings, user_key, tmp_path):
    """The pages show an action only to a key the API lets do it: they compare `/api/me`'s `id`
    with an object's `owner_key_id` (a model list row's `owner` with the key's name), hide Retry
    when the spec is hidden, send service keys to the playground, and download exports."""
    from studio.jobs.status import create_job
    from studio.keys import create_key
    from studio.registry.versions import register_version
    from studio.store.db import session_scope

    with session_scope(settings.db_url) as s:
        other = create_key(s, "bob", "user")[0]
        service = create_key(s, "svc", "service")[0]
    alice_id, bob_id = _key_id(settings, "alice"), _key_id(settings, "bob")
    assert client.get("/api/me", headers=bearer(user_key)).json() == {"id": alice_id, "name": "alice", "role": "user"}
    assert client.get("/api/me", headers=bearer(other)).json()["id"] == bob_id
    assert client.get("/api/me", headers=bearer(service)).json()["role"] == "service"
    # A service key gets no team page's data: the menu shows it the playground only.
    assert_problem(client.get("/api/jobs", headers=bearer(service)), 403, "service")
    assert_problem(client.get("/api/models", headers=bearer(service)), 403, "service")

    with session_scope(settings.db_url) as s:
        register_version(s, name="rev", base_model="tiny", method="sft", adapter_type="lora", uri="/x",
                         owner_key_id=alice_id)
        job_id = create_job(s, name="rev", spec={"method": "sft", "base_model": "/m", "data": {"dataset": "d@1"}},
                            max_retries=0, submitted_by="alice", owner_key_id=alice_id).id
    assert [m["owner"] for m in client.get("/api/models", headers=bearer(other)).json()] == ["alice"]
    assert client.get("/api/models/rev", headers=bearer(other)).json()["owner_key_id"] == alice_id
    assert_problem(client.post("/api/models/rev@1/promote", headers=bearer(other), json={}), 403, "rev")

    mine = client.get(f"/api/jobs/{job_id}", headers=bearer(user_key)).json()
    assert mine["owner_key_id"] == alice_id and mine["spec"]["data"]["dataset"] == "d@1" and "spec_hidden" not in mine
    theirs = client.get(f"/api/jobs/{job_id}", headers=bearer(other)).json()
    assert theirs["owner_key_id"] == alice_id and theirs["spec"] is None and theirs["spec_hidden"]
    assert client.get("/api/jobs", headers=bearer(other)).json()[0]["owner_key_id"] == alice_id
    assert_problem(client.post(f"/api/jobs/{job_id}/cancel", headers=bearer(other)), 403, f"job {job_id}")
    assert_problem(client.get(f"/api/jobs/{job_id}/logs", headers=bearer(other)), 403, "logs")

    # The snapshot page's download: a file over HTTP for a user key (no server path involved).
    _ingest(settings, tmp_path, "d", 2)
    r = client.get("/api/datasets/d@1/export?format=jsonl", headers=bearer(other))
    assert r.status_code == 200, r.text
    assert 'filename="' in r.headers["content-disposition"]
    assert [json.loads(line)["prompt"] for line in r.text.splitlines()] == ["p0", "p1"]
