"""Checks shared by the API tests: the auth header and the problem+json error shape."""

from __future__ import annotations


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def assert_problem(response, status: int, *detail_parts: str) -> dict:
    """The response is an RFC 9457 problem of ``status`` whose detail holds every ``detail_part``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    for part in detail_parts:
        assert part in body["detail"], body["detail"]
    return body
