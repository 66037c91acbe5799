"""The studio's HTTP API metrics on /metrics: requests and latency by route template and status."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.api.checks import bearer


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_requests_latency_and_errors_by_route_and_status(client, user_key):
    def count(route: str, status: str, method: str = "GET") -> float:
        text = client.get("/metrics", headers=bearer(user_key)).text
        key = ("studio_http_requests_total",
               frozenset({"route": route, "method": method, "status": status}.items()))
        return _samples(text).get(key, 0.0)

    before = {k: count(*k) for k in [("/api/jobs/{job_id}", "404"), ("/api/jobs/{job_id}", "401"),
                                     ("(unmatched)", "404"), ("/healthz", "200")]}
    client.get("/api/jobs/987654", headers=bearer(user_key))
    client.get("/api/jobs/987655", headers=bearer(user_key))
    client.get("/api/jobs/987654")
    client.get("/no/such/path/x1")
    client.get("/healthz")
    assert count("/api/jobs/{job_id}", "404") == before[("/api/jobs/{job_id}", "404")] + 2
    assert count("/api/jobs/{job_id}", "401") == before[("/api/jobs/{job_id}", "401")] + 1
    assert count("(unmatched)", "404") == before[("(unmatched)", "404")] + 1
    assert count("/healthz", "200") == before[("/healthz", "200")] + 1

    text = client.get("/metrics", headers=bearer(user_key)).text
    assert "/no/such/path/x1" not in text and "987654" not in text  # templates, not raw paths
    samples = _samples(text)
    key = ("studio_http_request_duration_seconds_count",
           frozenset({"route": "/api/jobs/{job_id}", "method": "GET"}.items()))
    assert samples[key] >= 3
