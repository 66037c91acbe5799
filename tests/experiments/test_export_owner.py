"""The preference export writes a dataset version as the calling key: into a dataset name another
key owns it is 403 (docs/security.md, Files); into a new name the caller owns it."""

from __future__ import annotations

from studio.access import name_owner
from studio.keys import create_key
from studio.store.db import session_scope

ARMS = [{"model": "tiny", "weight": 0.5}, {"model": "reverse-tiny@1", "weight": 0.5}]


def test_the_export_adds_only_to_the_callers_dataset_names(client, headers, registry, log_completions,
                                                           settings):
    with session_scope(settings.db_url) as s:
        bob, bob_row = create_key(s, "bob", "user")
        bob_id = bob_row.id
    up = client.post("/api/datasets", headers={"Authorization": f"Bearer {bob}"}, data={"name": "bobs"},
                     files={"file": ("b.jsonl", b'{"prompt": "p", "completion": "c"}\n', "text/plain")})
    assert up.status_code == 201, up.text
    assert client.post("/api/experiments", json={"alias": "rev-ab", "arms": ARMS}, headers=headers).status_code == 201
    log_completions([("p1", "rev-ab", "tiny", "tiny", "reverse: 7 8", "7 8"),
                     ("p2", "rev-ab", "reverse-tiny@1", "reverse-tiny@1", "reverse: 7 8", "8 7")])
    client.post("/v1/feedback", json={"completion_id": "p1", "preferred_completion_id": "p2"}, headers=headers)

    refused = client.post("/api/experiments/rev-ab/export", json={"name": "bobs"}, headers=headers)
    assert refused.status_code == 403 and "'bobs' belongs to another key" in refused.json()["detail"]
    assert [v["version"] for v in client.get("/api/datasets/bobs", headers=headers).json()["versions"]] == [1]
    ok = client.post("/api/experiments/rev-ab/export", json={"name": "ab-pref"}, headers=headers)
    assert ok.status_code == 201, ok.text
    with session_scope(settings.db_url) as s:
        assert name_owner(s, "dataset", "bobs") == bob_id
        owner = name_owner(s, "dataset", "ab-pref")
    assert owner is not None and owner != bob_id
