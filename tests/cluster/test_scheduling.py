"""Training jobs on a cluster: what each Ray Train worker reserves, which GPU demand is refused at
submit, and — on a real multi-node local Ray — that a job whose workers the cluster cannot place yet
waits (RUNNING, not FAILED) until a node that offers them joins, then finishes and gives them back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.cluster import ResourcesSpec, cluster_gpu_capacity, worker_resources
from studio.errors import StudioError
from studio.settings import StudioSettings, settings_env

REPO = Path(__file__).resolve().parents[2]


def settings(**kw) -> StudioSettings:
    return StudioSettings(home=Path("/tmp/unused-studio-home"), **kw)


def test_worker_resources_add_the_cluster_resources_to_the_recipe():
    gpu = ResourcesSpec(num_workers=4, use_gpu=True, gpus_per_worker=1, cpus_per_worker=8)
    cpu = ResourcesSpec(num_workers=2, cpus_per_worker=1)
    assert worker_resources(cpu, settings()) == {"CPU": 1}
    assert worker_resources(gpu, settings()) == {"CPU": 8, "GPU": 1}
    cluster = settings(train_worker_resources={"training": 1})
    assert worker_resources(gpu, cluster) == {"CPU": 8, "GPU": 1, "training": 1}
    with pytest.raises(StudioError, match="gpus_per_worker"):
        worker_resources(gpu, settings(train_worker_resources={"GPU": 2}))


def test_train_worker_resources_come_from_the_environment_and_reach_jobs(monkeypatch):
    monkeypatch.setenv("STUDIO_TRAIN_WORKER_RESOURCES", '{"training": 1}')
    monkeypatch.setenv("STUDIO_CLUSTER_MAX_GPUS", "64")
    s = StudioSettings()
    assert (s.train_worker_resources, s.cluster_max_gpus) == ({"training": 1.0}, 64)
    # Forwarded to Ray jobs and Serve replicas with the other STUDIO_* settings.
    env = settings_env(s)
    assert json.loads(env["STUDIO_TRAIN_WORKER_RESOURCES"]) == {"training": 1.0}
    assert env["STUDIO_CLUSTER_MAX_GPUS"] == "64"


def test_gpu_capacity_of_an_autoscaling_cluster():
    assert cluster_gpu_capacity(0.0, settings()) == 0.0  # fixed cluster: what is attached now
    assert cluster_gpu_capacity(0.0, settings(cluster_max_gpus=64)) == 64.0
    assert cluster_gpu_capacity(72.0, settings(cluster_max_gpus=64)) == 72.0


def test_accelerator_type_reaches_the_scaling_config():
    from ray.train import ScalingConfig

    r = ResourcesSpec(num_workers=2, use_gpu=True, accelerator_type="A100")
    scaling = ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                            resources_per_worker=worker_resources(r, settings(train_worker_resources={"training": 1})),
                            accelerator_type=r.accelerator_type)
    assert scaling._resources_per_worker_not_none == {"CPU": 1.0, "GPU": 1.0, "training": 1.0,
                                                      "accelerator_type:A100": 0.001}


# ---------------------------------------------------------------- a job that waits for its node

def _wait(predicate, timeout_s: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout_s  # hang guard only
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


@pytest.mark.slow
@pytest.mark.no_engine
def test_a_job_waits_for_a_training_node_then_releases_it(tmp_path: Path, monkeypatch):
    """No node offers `training` when the job starts: Ray Train's worker-group start times out and is
    retried (seconds here, via RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S), the job stays RUNNING. Then a
    node with `training: 1` joins — as the autoscaler would add one — and the job succeeds there; at
    the end the `training` unit is free again."""
    import ray
    from ray.cluster_utils import Cluster

    from studio.models.tiny import make_tiny
    from studio.registry.versions import get_version
    from studio.store import db as store_db
    from studio.store.db import session_scope
    from studio.store.models import Job
    from studio.train.toy_data import ingest_toy_datasets

    home = tmp_path / "project" / ".studio"
    s = StudioSettings(home=home, database_url=None, artifacts_uri=None, mlflow_uri=None, redis_url=None,
                       admin_key=None)
    store_db.init_db(s.db_url)
    s.models_dir.mkdir(parents=True)
    make_tiny(s.models_dir / "tiny")
    ingest_toy_datasets(s, tmp_path / "data")

    from .s3_server import free_port

    # Fresh ports (6379 is Redis here); Train V2's controller finds the state API through this
    # variable when several local Rays share the machine, and Ray's processes inherit it from us.
    dashboard = free_port()
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{dashboard}")
    cluster = Cluster(initialize_head=True, head_node_args={  # no `training` on the head
        "num_cpus": 3, "gcs_server_port": free_port(), "include_dashboard": True, "dashboard_port": dashboard})
    proc = None
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
        env.update(STUDIO_HOME=str(home), RAY_ADDRESS=cluster.address, PYTHONUNBUFFERED="1",
                   STUDIO_TRAIN_WORKER_RESOURCES='{"training": 1}',
                   RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="3")
        log = tmp_path / "entrypoint.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "studio.train.run", "--recipe",
                 str(REPO / "configs" / "train" / "sft_reverse_tiny.yaml"),
                 "hyper.max_steps=2", "hyper.logging_steps=1", "resources.num_workers=1", "eval_after=null"],
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def job():
            with session_scope(s.db_url) as sess:
                j = sess.query(Job).first()
                return (j.status, j.result) if j else None

        _wait(lambda: (job() or ("",))[0] == "RUNNING", 180, "the job to be RUNNING", log)
        # At least two placement timeouts and retries later, the job is still waiting, not failed.
        _wait(lambda: log.read_text(errors="replace").count("WorkerGroupStartupTimeoutError") >= 2,
              180, "two worker-group start timeouts", log)
        assert job()[0] == "RUNNING" and proc.poll() is None

        cluster.add_node(num_cpus=2, resources={"training": 1})
        _wait(lambda: proc.poll() is not None, 300, "the job to finish on the new node", log)
        assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
        status, result = job()
        assert status == "SUCCEEDED"
        with session_scope(s.db_url) as sess:
            assert get_version(sess, result["model"]).uri

        ray.init(address=cluster.address, logging_level="ERROR")
        _wait(lambda: ray.available_resources().get("training") == 1.0, 60, "the training unit back")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        ray.shutdown()
        cluster.shutdown()
        _stop_dashboard_modules(f"http://127.0.0.1:{dashboard}")
        store_db.get_engine(s.db_url).dispose()
        store_db.get_engine.cache_clear()


def _stop_dashboard_modules(api_address: str) -> None:
    """``Cluster.shutdown`` leaves the dashboard's module processes (its forkserver and one
    ``ray-dashboard-*Head`` per module) running; they carry this test's RAY_API_SERVER_ADDRESS,
    which tells them from any other Ray's on the machine."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ray.dashboard" in " ".join(proc.info["cmdline"] or []) \
                    and proc.environ().get("RAY_API_SERVER_ADDRESS") == api_address:
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in mine:
        proc.kill()
    psutil.wait_procs(mine, timeout=10)
