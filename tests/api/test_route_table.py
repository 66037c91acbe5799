"""docs/security.md's route table is the contract: every route of the live app's OpenAPI is in it,
nothing else is, and a key below a route's role is refused (401 without a key, 403 with a lesser
role) before the route looks at its input. Ownership rules are tested per resource (test_models,
test_ownership, …)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from studio.keys import create_key
from studio.store.db import session_scope
from tests.api.checks import bearer

TABLE = Path(__file__).resolve().parents[2] / "docs" / "security.md"
ROLES = ("none", "any", "team", "admin")
ROW = re.compile(r"^\| (GET|POST|PUT|PATCH|DELETE) \| (\S+) \| (\w+) \|")


def route_table() -> dict[tuple[str, str], str]:
    rows: dict[tuple[str, str], str] = {}
    for line in TABLE.read_text().splitlines():
        m = ROW.match(line)
        if m:
            method, path, role = m.groups()
            assert role in ROLES, f"docs/security.md: {method} {path} has unknown role {role!r}"
            assert (method, path) not in rows, f"docs/security.md lists {method} {path} twice"
            rows[(method, path)] = role
    return rows


def openapi_routes(client) -> set[tuple[str, str]]:
    spec = client.get("/api/openapi.json").json()
    return {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}


def _concrete(path: str) -> str:
    # Ids that exist nowhere: the role check must answer before any lookup would 404.
    return re.sub(r"\{(\w+)\}", lambda m: "999" if m.group(1).endswith("id") else "nothing-here", path)


@pytest.fixture
def keys(settings, admin_key, user_key) -> dict[str, str]:
    with session_scope(settings.db_url) as s:
        service = create_key(s, "svc", "service")[0]
    return {"admin": admin_key, "user": user_key, "service": service}


def test_the_table_lists_every_route_and_only_those(client):
    table, live = set(route_table()), openapi_routes(client)
    assert not live - table, f"routes missing from docs/security.md: {sorted(live - table)}"
    assert not table - live, f"docs/security.md lists routes the app does not have: {sorted(table - live)}"


def test_a_key_below_the_routes_role_is_refused(client, keys):
    lesser = {"none": [], "any": [], "team": ["service"], "admin": ["user", "service"]}
    checked = 0
    for (method, path), role in sorted(route_table().items()):
        url = _concrete(path)
        if role != "none":
            r = client.request(method, url, json={})
            assert r.status_code == 401, f"{method} {path} without a key: {r.status_code} {r.text[:200]}"
        for who in lesser[role]:
            r = client.request(method, url, headers=bearer(keys[who]), json={})
            assert r.status_code == 403, f"{method} {path} with a {who} key: {r.status_code} {r.text[:200]}"
            assert "role" in r.text, r.text
            checked += 1
    assert checked > 50  # the table was read


def test_a_key_at_the_routes_role_gets_past_the_role_check(client, keys):
    """The other side: the least role the table names is not refused for its role (it may still
    get 404/422/503 for the made-up input)."""
    for (method, path), role in sorted(route_table().items()):
        if role == "none":
            continue
        who = {"any": "service", "team": "user", "admin": "admin"}[role]
        r = client.request(method, _concrete(path), headers=bearer(keys[who]), json={})
        assert r.status_code not in (401, 403) or "role" not in r.text, \
            f"{method} {path} refused a {who} key: {r.status_code} {r.text[:200]}"
