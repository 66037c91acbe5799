"""Every URL the server fetches for a caller passes the egress guard, proven with a loopback
listener that must hear nothing: an ``init_adapter`` URL (400 at POST /api/jobs, no job), an
adapter URI fetched for serving, a dataset URL under the data roots (readable once
STUDIO_EGRESS_ALLOW lists the host), and a model source, which is never a URL. SQLite and
PostgreSQL, real keys."""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator

import fsspec
import fsspec.config
import pytest

from studio.data.ingest import ingest_path
from studio.data.sources import check_allowed
from studio.errors import StudioError
from studio.models.adapters import fetch_adapter
from studio.models.source import resolve_model_source
from tests.api.checks import assert_problem, bearer
from tests.jobs.inputs import ingest_datasets, make_model_dir, train_spec
from tests.loopback import HandlerThread

ROWS = "".join(json.dumps({"prompt": f"reverse: {i}", "completion": str(i)[::-1]}) + "\n" for i in range(10, 20))


class Listener(HandlerThread):
    """Loopback HTTP server: GET/HEAD of /data.jsonl answers rows, anything else 404; records paths."""

    def __init__(self) -> None:
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, send_body: bool) -> None:
                seen.append(self.path)
                data = ROWS.encode() if self.path == "/data.jsonl" else b"not here"
                self.send_response(200 if self.path == "/data.jsonl" else 404)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if send_body:
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

            def log_message(self, *args) -> None:
                pass

        super().__init__(Handler)


@pytest.fixture
def listener(monkeypatch) -> Iterator[Listener]:
    monkeypatch.delenv("STUDIO_EGRESS_ALLOW", raising=False)
    for protocol in ("http", "https"):  # guard_url installs fsspec's http guard: put the config back
        monkeypatch.setitem(fsspec.config.conf, protocol, dict(fsspec.config.conf.get(protocol, {})))
    server = Listener()
    yield server
    server.stop()


def test_an_init_adapter_url_on_loopback_is_refused_before_a_job_exists(client, user_key, admin_key, settings,
                                                                       tmp_path, listener):
    """A user key names no URL outside the artifact store (403); an admin's outside the data roots
    is 403 too; neither is fetched."""
    ingest_datasets(settings, tmp_path / "data")
    spec = train_spec(make_model_dir(settings.models_dir / "model"))
    for url in (f"http://localhost:{listener.port}/adapter", "http://169.254.169.254/latest/meta-data/"):
        problem = assert_problem(client.post("/api/jobs", headers=bearer(user_key), json={**spec, "init_adapter": url}),
                                 403, "init_adapter", "outside", "the artifact store")
        assert "registered version" in problem["fix"]
        problem = assert_problem(client.post("/api/jobs", headers=bearer(admin_key), json={**spec, "init_adapter": url}),
                                 403, "outside the allowed data roots")
        assert "STUDIO_DATA_ROOTS" in problem["fix"]
    assert client.get("/api/jobs", headers=bearer(user_key)).json() == []
    assert listener.seen == []


def test_a_base_model_url_is_refused_without_a_download(client, user_key, settings, tmp_path, listener):
    ingest_datasets(settings, tmp_path / "data")
    spec = train_spec(make_model_dir(settings.models_dir / "model"))
    url = f"http://127.0.0.1:{listener.port}/model"
    assert_problem(client.post("/api/jobs", headers=bearer(user_key), json={**spec, "base_model": url}),
                   400, "is a URL")
    with pytest.raises(StudioError, match="does not download models from URLs"):
        resolve_model_source("s3://bucket/model")
    assert listener.seen == []


def test_an_adapter_uri_on_loopback_is_not_fetched(tmp_path, listener):
    with pytest.raises(StudioError, match="loopback") as e:
        fetch_adapter(f"http://localhost:{listener.port}/adapter", tmp_path / "cache")
    assert e.value.status_code == 400 and listener.seen == []


def test_a_dataset_url_is_guarded_then_read_once_allowed(settings, listener):
    url = f"http://localhost:{listener.port}/data.jsonl"
    roots = settings.model_copy(update={"data_roots": f"http://localhost:{listener.port}"})
    with pytest.raises(StudioError, match="resolves to 127.0.0.1 \\(loopback\\)"):
        ingest_path(url, "remote", roots, kind="prompt_completion")
    assert listener.seen == []
    allowed = roots.model_copy(update={"egress_allow": "localhost"})
    assert check_allowed(url, allowed) == url
    # What ingest then reads it with: fsspec's http filesystem, which the guard admits for this host.
    assert fsspec.filesystem("http").cat_file(url).decode() == ROWS
    assert listener.seen[-1] == "/data.jsonl"
    report = ingest_path(url, "remote", allowed, kind="prompt_completion")
    assert (report.name, report.row_count, report.rejected_count) == ("remote", 10, 0)


def test_an_after_training_evaluator_on_loopback_is_refused_at_submit(client, user_key, settings, tmp_path,
                                                                      listener):
    ingest_datasets(settings, tmp_path / "data")
    spec = train_spec(make_model_dir(settings.models_dir / "model"),
                      after_training={"scorer": {"type": "http", "url": f"http://localhost:{listener.port}/s"}})
    assert_problem(client.post("/api/jobs", headers=bearer(user_key), json=spec), 400, "loopback")
    assert client.get("/api/jobs", headers=bearer(user_key)).json() == [] and listener.seen == []
