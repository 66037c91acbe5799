"""MLflow as users know it (issue 26 item 2): every registry version is a registered model version
in MLflow (read back with the official ``mlflow.MlflowClient``), promotion moves the @champion /
@challenger aliases, the API links each job and version to the MLflow UI, and MLflow down never
fails a registration: the scheduler's mirror pass (or ``studio models mlflow-sync``) catches up.
The studio's tracking store is the default one (SQLite under STUDIO_HOME) unless a test says."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from studio import mlflow_server
from studio.cli.main import app as cli
from studio.data.snapshots import resolve_snapshot
from studio.jobs.status import create_job
from studio.mlflow_links import ui_url
from studio.registry.mlflow_mirror import MirrorPass, mirror_best_effort, sync
from studio.registry.versions import list_versions, register_version
from studio.settings import StudioSettings, get_settings
from studio.store.db import session_scope
from studio.store.models import Job
from studio.train import tracking
from tests.api.checks import bearer
from tests.jobs.inputs import ingest_datasets
from tests.loopback import free_port

# SQLite only: the mirror reads the registry through the same queries on either database.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
COMMON = {"base_model": "/models/tiny", "method": "sft", "adapter_type": "lora"}


@pytest.fixture
def registered(settings: StudioSettings, tmp_path: Path) -> dict:
    """``rev`` v1 (bare) and v2 (from a job on digits@1, with an MLflow run id)."""
    ingest_datasets(settings, tmp_path / "data")
    with session_scope(settings.db_url) as s:
        snap = resolve_snapshot(s, "digits").snapshot
        job = create_job(s, name="rev", spec={"method": "sft"}, max_retries=0, submitted_by="alice")
        register_version(s, name="rev", uri="/a/rev-1", **COMMON)
        register_version(s, name="rev", uri="/a/rev-2", dataset_snapshot_id=snap.id, job_id=job.id, **COMMON)
        return {"job_id": job.id, "snapshot_id": snap.id}


def aliases(client: MlflowClient, name: str) -> dict[str, int]:
    return {k: int(v) for k, v in client.get_registered_model(name).aliases.items()}


def test_a_registration_is_a_registered_model_version_with_its_tags(settings, registered):
    line = mirror_best_effort(settings, "rev")
    assert "created rev@1, rev@2" in line, line
    client = MlflowClient(tracking_uri=settings.mlflow)
    v2 = client.get_model_version("rev", "2")
    assert v2.source == "/a/rev-2"
    assert {k: v2.tags[k] for k in ("studio.base_model", "studio.snapshot_id", "studio.job_id", "studio.version")} == {
        "studio.base_model": "/models/tiny", "studio.snapshot_id": registered["snapshot_id"],
        "studio.job_id": str(registered["job_id"]), "studio.version": "2"}
    assert client.get_model_version("rev", "1").source == "/a/rev-1"
    # No champion yet: the newest candidate is the challenger.
    assert aliases(client, "rev") == {"challenger": 2}
    # Again: nothing new in MLflow (versions are found by their studio.version tag).
    with session_scope(settings.db_url) as s:
        again = sync(s, settings.mlflow)
    assert again.in_step == ["rev"] and not again.changed()
    assert len(client.search_model_versions("name = 'rev'")) == 2


def test_promotion_sets_the_champion_alias_and_the_api_links_to_the_mlflow_ui(settings, registered):
    from fastapi.testclient import TestClient

    from studio.api.app import create_app
    from studio.keys import create_key

    settings = settings.model_copy(update={"mlflow_ui_url": "http://mlflow.test:5000/"})
    with session_scope(settings.db_url) as s:
        admin = create_key(s, "root", "admin")[0]
        s.get(Job, registered["job_id"]).mlflow_run_id = "0123abcd"
    client = MlflowClient(tracking_uri=settings.mlflow)
    with TestClient(create_app(settings)) as api:
        r = api.post("/api/models/rev@1/promote", headers=bearer(admin), json={})
        assert r.status_code == 200, r.text
        # The mirror runs once the promotion is answered (a background task; TestClient waits for it).
        assert aliases(client, "rev") == {"champion": 1, "challenger": 2}
        assert api.post("/api/models/rev@2/promote", headers=bearer(admin), json={}).status_code == 200
        assert aliases(client, "rev") == {"champion": 2}  # no candidate newer than the champion
        versions = api.get("/api/models/rev", headers=bearer(admin)).json()["versions"]
        assert [v["mlflow_url"] for v in versions] == [
            "http://mlflow.test:5000/#/models/rev/versions/1", "http://mlflow.test:5000/#/models/rev/versions/2"]
        lineage = api.get("/api/models/rev@2/lineage", headers=bearer(admin)).json()
        assert lineage["model"]["mlflow_url"] == "http://mlflow.test:5000/#/models/rev/versions/2"
        job = api.get(f"/api/jobs/{registered['job_id']}", headers=bearer(admin)).json()
        assert job["mlflow_url"] == "http://mlflow.test:5000/#/runs/0123abcd"


def test_the_ui_link_follows_the_tracking_uri(settings):
    remote = settings.model_copy(update={"mlflow_uri": "https://bob:s3cret@mlflow.corp:8443/ml/"})
    assert ui_url(remote) == "https://mlflow.corp:8443/ml"  # never the credentials
    local = settings.model_copy(update={"mlflow_ui": True, "mlflow_port": 5123})
    assert ui_url(local) == "http://127.0.0.1:5123"
    assert ui_url(settings.model_copy(update={"mlflow_ui": False})) is None


@pytest.mark.slow
@pytest.mark.parallel
def test_mlflow_down_registration_succeeds_and_the_mirror_catches_up(settings, registered, tmp_path):
    """A remote tracking server that is down: tracking and the mirror say so and go on; the
    scheduler's mirror pass retries on its interval and mirrors everything once the server (a
    real `mlflow server`, started by the studio's own launcher) answers."""
    port = free_port()
    down = settings.model_copy(update={"mlflow_uri": f"http://127.0.0.1:{port}"})
    started = time.monotonic()
    assert tracking.start_run(down.mlflow, experiment="rev", artifact_root="file:///tmp/x", run_name="job-1",
                              params={}, tags={}) is None  # the job trains without a run
    tracking.log_metrics(down.mlflow, "some-run", {"loss": 1.0}, 1)  # skipped, no exception
    said: list[str] = []
    line = mirror_best_effort(down, "rev", said.append)
    assert said == [line] and "pending" in line and f"127.0.0.1:{port}" in line and "mlflow-sync" in line, line
    assert time.monotonic() - started < 60  # bounded retries, not MLflow's ~4 minutes
    with session_scope(settings.db_url) as s:  # the registry is as it was
        assert [v.version for v in list_versions(s, "rev")] == [1, 2]

    now = [0.0]
    mirror = MirrorPass(down.model_copy(update={"mlflow_sync_interval_s": 30}), clock=lambda: now[0])
    assert mirror.run() is None and "did not take the registry mirror" in mirror.last_error
    # The server comes back: the studio's launcher on its own SQLite store, on the port `down` names.
    server = settings.model_copy(update={"home": tmp_path / "mlflow-home", "mlflow_uri": None,
                                         "mlflow_ui": True, "mlflow_port": port})
    assert mlflow_server.start(server).state == "starting"
    try:
        assert mlflow_server.wait_ready(server, 120).state == "up"
        assert mlflow_server.status(server).state == "up"
        now[0] = 10
        assert mirror.run() is None  # not yet time: the pass waits its interval
        now[0] = 31
        report = mirror.run()
        assert report is not None and report.created == ["rev@1", "rev@2"] and mirror.last_error is None, mirror.last_error
        user = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        v1 = user.get_model_version("rev", "1")
        # A tracking server takes a local path only inside a run's artifacts: the tag keeps the path.
        assert (v1.source, v1.tags["studio.uri"]) == ("studio:/models/rev/versions/1", "/a/rev-1")
        assert aliases(user, "rev") == {"challenger": 2}
        now[0] = 62
        assert mirror.run() is None  # nothing changed since: no sync
        get_settings.cache_clear()
        try:
            r = CliRunner().invoke(cli, ["models", "mlflow-sync"], env={
                "STUDIO_HOME": str(settings.home), "STUDIO_DATABASE_URL": settings.db_url,
                "STUDIO_MLFLOW_URI": down.mlflow})
        finally:
            get_settings.cache_clear()
        assert r.exit_code == 0 and "1 name(s) already in step" in r.output, r.output
    finally:
        assert mlflow_server.stop(server)
    assert mlflow_server.status(server).state == "down" and not (server.home_abs / "mlflow-ui.json").exists()


def test_the_ui_is_not_started_on_a_taken_port_off_or_for_a_remote_tracking_server(settings):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        taken = settings.model_copy(update={"mlflow_ui": True, "mlflow_port": port})
        ui = mlflow_server.start(taken)
    assert ui.state == "blocked" and f"port {port}" in ui.note and "STUDIO_MLFLOW_PORT" in ui.note
    assert not mlflow_server.state_file(taken).exists()
    assert mlflow_server.start(settings.model_copy(update={"mlflow_ui": False})).state == "off"
    remote = settings.model_copy(update={"mlflow_ui": True, "mlflow_uri": "http://mlflow.corp:5000"})
    assert (mlflow_server.start(remote).state, mlflow_server.start(remote).url) == ("remote", "http://mlflow.corp:5000")
    assert not mlflow_server.state_file(remote).exists()
