"""/api/datasets: upload with bad rows reported, list, versions, rows of a split."""

from __future__ import annotations

import json

import pytest

from tests.api.checks import assert_problem, bearer


def pc_lines(n: int, start: int = 0) -> list[str]:
    return [json.dumps({"prompt": f"reverse: {i}", "completion": str(i)[::-1]})
            for i in range(start, start + n)]


def upload(client, key, name, filename, content: bytes | str, **form):
    if isinstance(content, str):
        content = content.encode()
    return client.post("/api/datasets", headers=bearer(key), data={"name": name, **form},
                       files={"file": (filename, content, "application/octet-stream")})


@pytest.fixture
def digits(client, user_key):
    """``digits``: v1 with 50 rows uploaded next to two bad ones, v2 with 60 rows."""
    lines = [*pc_lines(20), "{not json", *pc_lines(30, 20), '{"prompt": "no completion"}']
    r1 = upload(client, user_key, "digits", "digits.jsonl", "\n".join(lines) + "\n")
    assert r1.status_code == 201, r1.text
    r2 = upload(client, user_key, "digits", "more.jsonl", "\n".join(pc_lines(60)) + "\n")
    assert r2.status_code == 201, r2.text
    return r1.json(), r2.json()


def test_upload_with_bad_rows_is_201_naming_them(client, user_key, digits):
    first, second = digits
    assert (first["name"], first["version"], first["kind"]) == ("digits", 1, "prompt_completion")
    assert (first["row_count"], first["rejected_count"], first["created"]) == (50, 2, True)
    assert first["source"] == "digits.jsonl"
    assert [r["row"] for r in first["rejected"]] == [21, 52]
    assert first["rejected"][0]["reason"].startswith("broken JSON")
    assert "missing column 'completion'" in first["rejected"][1]["reason"]
    assert (second["version"], second["row_count"], second["rejected"]) == (2, 60, [])


def test_uploading_the_same_content_again_is_not_a_new_version(client, user_key, digits):
    r = upload(client, user_key, "digits", "again.jsonl", "\n".join(pc_lines(60)))
    assert r.status_code == 201
    assert (r.json()["version"], r.json()["created"]) == (2, False)


def test_list_and_show_datasets(client, user_key, digits):
    first, second = digits
    listed = client.get("/api/datasets", headers=bearer(user_key))
    assert listed.status_code == 200
    assert [(d["name"], d["version"], d["rows"], d["snapshot_id"]) for d in listed.json()] == [
        ("digits", 2, 60, second["snapshot_id"])]

    shown = client.get("/api/datasets/digits", headers=bearer(user_key))
    assert shown.status_code == 200
    versions = shown.json()["versions"]
    assert [(v["version"], v["rows"], v["rejected_rows"]) for v in versions] == [(1, 50, 2), (2, 60, 0)]
    # The version records the uploaded file's name, not the server's temporary copy.
    assert [v["source"] for v in versions] == ["digits.jsonl", "more.jsonl"]


def test_rows_of_a_validation_split(client, user_key, digits):
    def rows(ref, **params):
        r = client.get(f"/api/datasets/{ref}/rows", headers=bearer(user_key),
                       params={"limit": 500, **params})
        assert r.status_code == 200, r.text
        return r.json()

    val = rows("digits", split="validation", validation_ratio=0.2)
    train = rows("digits", split="train", validation_ratio=0.2)
    assert val["snapshot_id"] == digits[1]["snapshot_id"]
    assert (val["total"], len(val["rows"]), train["total"]) == (12, 12, 48)
    prompts = lambda page: {r["prompt"] for r in page["rows"]}  # noqa: E731
    assert prompts(val).isdisjoint(prompts(train))
    assert len(prompts(val) | prompts(train)) == 60
    assert rows("digits", split="validation", validation_ratio=0.2) == val
    assert prompts(rows("digits", split="validation", validation_ratio=0.2, seed=1)) != prompts(val)

    # name@N and an id prefix address the older version.
    assert rows("digits@1")["total"] == 50
    assert rows(digits[0]["snapshot_id"][:12])["total"] == 50


def test_rows_are_paged(client, user_key, digits):
    r = client.get("/api/datasets/digits/rows", headers=bearer(user_key),
                   params={"limit": 5, "offset": 10})
    body = r.json()
    assert body["total"] == 60
    assert [row["prompt"] for row in body["rows"]] == [f"reverse: {i}" for i in range(10, 15)]


@pytest.mark.parametrize(
    "params, field",
    [({"validation_ratio": "lots"}, "query.validation_ratio"), ({"offset": -1}, "query.offset"),
     ({"limit": -5}, "query.limit")],
)
def test_bad_row_query_is_422_naming_the_field(client, user_key, digits, params, field):
    r = client.get("/api/datasets/digits/rows", headers=bearer(user_key), params=params)
    problem = assert_problem(r, 422, f"{field}:")
    assert field in [e["field"] for e in problem["errors"]]


def test_bad_split_is_400(client, user_key, digits):
    r = client.get("/api/datasets/digits/rows", headers=bearer(user_key),
                   params={"split": "validation", "validation_ratio": 1.5})
    assert_problem(r, 400, "out of range")


def test_unknown_dataset_is_404_problem_json(client, user_key):
    assert_problem(client.get("/api/datasets/nope", headers=bearer(user_key)), 404, "'nope'")
    assert_problem(client.get("/api/datasets/nope/rows", headers=bearer(user_key)), 404, "'nope'")
    assert_problem(client.get("/api/datasets/nope@2/rows", headers=bearer(user_key)), 404)


def test_upload_without_a_name_is_422_naming_it(client, user_key):
    r = client.post("/api/datasets", headers=bearer(user_key),
                    files={"file": ("x.jsonl", b'{"text": "a"}\n', "application/octet-stream")})
    problem = assert_problem(r, 422, "name:")
    assert [e["field"] for e in problem["errors"]] == ["name"]


def test_upload_with_an_unknown_kind_is_422(client, user_key):
    r = upload(client, user_key, "x", "x.jsonl", '{"text": "a"}\n', kind="sft")
    assert_problem(r, 422, "kind:")


def test_upload_with_a_forced_kind(client, user_key):
    r = upload(client, user_key, "t", "t.jsonl", '{"prompt": "p", "completion": "c", "text": "t"}\n',
               kind="text")
    assert r.status_code == 201 and r.json()["kind"] == "text"


def test_upload_of_an_unknown_format_is_400(client, user_key):
    # .txt is a document format now (one row per file); an unknown extension is still refused.
    problem = assert_problem(upload(client, user_key, "x", "x.xyz", "hello"), 400, "'x.xyz'")
    assert ".jsonl" in problem["fix"]


def test_all_bad_upload_is_400_naming_the_file_and_stores_nothing(client, user_key):
    r = upload(client, user_key, "bad", "mine.jsonl", "{oops\n[1, 2]\n")
    assert_problem(r, 400, "no valid rows in mine.jsonl", "row 1: broken JSON")
    assert client.get("/api/datasets", headers=bearer(user_key)).json() == []


def test_upload_needs_a_key(client):
    r = client.post("/api/datasets", data={"name": "x"},
                    files={"file": ("x.jsonl", b'{"text": "a"}\n', "application/octet-stream")})
    assert_problem(r, 401)


# --- dataset names have owners (docs/security.md) -------------------------------------------------


def _key_row(settings, name: str, role: str) -> tuple[str, int]:
    from studio.keys import create_key
    from studio.store.db import session_scope

    with session_scope(settings.db_url) as s:
        secret, row = create_key(s, name, role)
        return secret, row.id


def _owners(settings, name: str) -> tuple[int | None, list[int | None]]:
    from sqlalchemy import select

    from studio.access import name_owner
    from studio.store.db import session_scope
    from studio.store.models import DatasetVersion

    with session_scope(settings.db_url) as s:
        versions = s.scalars(select(DatasetVersion.owner_key_id).where(DatasetVersion.name == name)
                             .order_by(DatasetVersion.version)).all()
        return name_owner(s, "dataset", name), list(versions)


def _alice_id(settings) -> int:
    from studio.store.db import session_scope
    from studio.store.models import ApiKey

    with session_scope(settings.db_url) as s:
        return s.query(ApiKey).filter_by(name="alice").one().id


def test_the_first_key_to_add_a_dataset_name_owns_it(client, settings, user_key, digits):
    from studio.store.artifacts import ArtifactStore

    alice = _alice_id(settings)
    assert _owners(settings, "digits") == (alice, [alice, alice])
    bob, _ = _key_row(settings, "bob", "user")
    refused = assert_problem(upload(client, bob, "digits", "mine.jsonl", "\n".join(pc_lines(5, 900))),
                             403, "dataset name 'digits' belongs to another key")
    assert "choose another name" in refused["fix"]
    store = ArtifactStore(settings.artifacts)
    assert not store.exists("uploads") or store.fs.find(store.path("uploads")) == []
    assert _owners(settings, "digits") == (alice, [alice, alice])
    # Reading stays open to every user key.
    assert client.get("/api/datasets/digits/rows", headers=bearer(bob)).json()["total"] == 60
    assert client.get("/api/datasets/digits/export", headers=bearer(bob)).status_code == 200
    # The owner and an admin add versions; the name stays the owner's.
    admin, admin_id = _key_row(settings, "root", "admin")
    assert upload(client, admin, "digits", "fix.jsonl", "\n".join(pc_lines(7, 500))).json()["version"] == 3
    assert upload(client, user_key, "digits", "v4.jsonl", "\n".join(pc_lines(8, 600))).json()["version"] == 4
    assert _owners(settings, "digits") == (alice, [alice, alice, admin_id, alice])
    # A new name is bob's.
    assert upload(client, bob, "bobs", "b.jsonl", "\n".join(pc_lines(3))).status_code == 201
    bobs_owner, versions = _owners(settings, "bobs")
    assert bobs_owner not in (None, alice) and versions == [bobs_owner]


def test_derived_versions_need_the_name_too(client, settings, user_key, digits):
    alice = _alice_id(settings)
    bob, _ = _key_row(settings, "bob", "user")
    h_alice, h_bob = bearer(user_key), bearer(bob)
    assert client.post("/api/datasets/digits/split", headers=h_alice, json={"validation_ratio": 0.2}).status_code == 201
    assert _owners(settings, "digits-train") == (alice, [alice])
    # bob's split of digits (default base name 'digits') would add to alice's names: nothing is written.
    assert_problem(client.post("/api/datasets/digits/split", headers=h_bob,
                               json={"validation_ratio": 0.3, "seed": 1}), 403, "'digits-train'")
    curate = {"source": "digits", "name": "digits", "steps": [{"type": "dedupe", "near_threshold": None}]}
    assert_problem(client.post("/api/datasets/curate", headers=h_bob, json=curate), 403, "'digits'")
    assert_problem(client.post("/api/datasets/from-eval", headers=h_bob,
                               json={"eval_job_id": 123456, "name": "digits"}), 403, "'digits'")
    assert len(client.get("/api/datasets/digits", headers=h_bob).json()["versions"]) == 2
    assert _owners(settings, "digits-train") == (alice, [alice])
    # Under bob's own names, bob derives what he likes from alice's data.
    r = client.post("/api/datasets/digits/split", headers=h_bob, json={"validation_ratio": 0.3, "name": "bob"})
    assert r.status_code == 201, r.text
    curate["name"] = "bob-uniq"
    assert client.post("/api/datasets/curate", headers=h_bob, json=curate).status_code == 201
    bob_id = _owners(settings, "bob-uniq")[0]
    assert bob_id not in (None, alice) and _owners(settings, "bob-train") == (bob_id, [bob_id])


def test_names_made_without_an_owner_are_changed_by_admins_only(client, settings, user_key, tmp_path):
    from studio.data.ingest import ingest_file

    path = tmp_path / "op.jsonl"
    path.write_text("\n".join(pc_lines(4)) + "\n")
    ingest_file(path, "operator", settings)  # the operator in-process (CLI, demo): no owner key
    assert _owners(settings, "operator") == (None, [None])
    assert_problem(upload(client, user_key, "operator", "x.jsonl", "\n".join(pc_lines(5, 50))), 403,
                   "has no owner key")
    admin, admin_id = _key_row(settings, "root", "admin")
    assert upload(client, admin, "operator", "x.jsonl", "\n".join(pc_lines(5, 50))).json()["version"] == 2
    assert _owners(settings, "operator") == (admin_id, [None, admin_id])


def test_a_service_key_adds_no_dataset(client, settings):
    service, _ = _key_row(settings, "app", "service")
    r = upload(client, service, "svc", "s.jsonl", "\n".join(pc_lines(2)))
    assert r.status_code == 403, r.text
    assert _owners(settings, "svc") == (None, [])
