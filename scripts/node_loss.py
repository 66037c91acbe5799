"""Node loss, simulated: a multi-node Ray on this machine (``ray.cluster_utils.Cluster``) loses the
node under a training job, or under a serving replica, and the studio carries on (issue 24 item 8).

    .venv/bin/python scripts/node_loss.py all   --out docs/bench/node-loss.json
    .venv/bin/python scripts/node_loss.py train --out /tmp/train.json [--model DIR] [--work DIR]
    .venv/bin/python scripts/node_loss.py serve --out /tmp/serve.json [--clients 8]

A "node" is a raylet with its own resources; losing it is ``Cluster.remove_node`` without a
graceful drain, then SIGKILL of every process that was under that raylet (Ray workers and what
they started, a vLLM engine core included): what a machine that vanishes leaves, which is nothing.

- ``train``: head (no ``training`` resource: the job's driver and its Ray Train controller live
  there) + three nodes with ``training: 1`` (``STUDIO_TRAIN_WORKER_RESOURCES``). An SFT job of the
  tiny model (``python -m studio.train.run``, two Ray Train workers, so one per node, a checkpoint
  every few steps on the artifact store, which every node reaches) runs on two of them; right after
  its first checkpoint the node of one worker is removed, the other worker survives it. Ray Train
  (``resources.max_worker_failures``) starts the whole worker group again on the two nodes left,
  from the latest checkpoint: the step counter continues (logged losses pick up at the checkpoint's
  step + ``logging_steps``), and the job registers its model once, with ``resumed_from_step``.
- ``serve``: head (Serve's controller and proxy, the studio's ingress and Router) + a node with
  ``serving: 1`` where the tiny model's replica (vLLM) runs; a second such node joins once it does
  (so the replica can only have landed on the first). ``--clients`` threads stream chat completions
  through ``/v1`` with the official ``openai`` client (no retries, a generous timeout); the replica's
  node is removed; Serve starts the replica on the other node. Reported: each request's outcome,
  failed requests (each must carry an OpenAI error body), requests that hit the client timeout
  (must be none) and the time to recovery (node removed → first answer to a request sent after it).

``all`` runs both on one cluster and one STUDIO_HOME (serve first: Serve's ingress and Router must
land on the head, before any other node exists; then the training nodes join), which saves a
cluster's start and stop; ``train`` and ``serve`` alone start a cluster each.

Only one vLLM engine ever runs: the replica's is killed with its node before Serve starts another,
and in ``all`` the standby node goes too (with the engine) before the training scenario starts. Nothing waits a fixed time: the clients
stream until each has an answer before the loss, and stop once each has one after it. The JSON
states how it ran (load average, CPUs, steps, clients). Takes ~2-3 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

PROMPT = [{"role": "user", "content": "reverse: 6 0 4 8"}]


def say(msg: str) -> None:
    print(f"[node_loss] {msg}", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s  # a hang guard, not a measurement
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# ---------------------------------------------------------------- the local cluster

class LocalCluster:
    """A ``Cluster`` on free ports with a temp dir of its own (never /tmp/ray, never port 6379),
    its dashboard's state API reachable at ``state_url``; ``close`` leaves no process behind."""

    def __init__(self, head_cpus: int):
        from ray.cluster_utils import Cluster

        self.head_cpus = head_cpus
        self.temp_dir = tempfile.mkdtemp(prefix="ray-node-loss-")
        dashboard = free_port()
        self.state_url = f"http://127.0.0.1:{dashboard}"
        # Train V2's controller finds the state API through this when several Rays share the
        # machine; Ray's processes inherit it from us, which also tells them from any other Ray's.
        os.environ["RAY_API_SERVER_ADDRESS"] = self.state_url
        self._before = {p.pid for p in psutil.Process().children(recursive=True)}
        # Cluster writes its address where `ray.init("auto")` looks (/tmp/ray): put back what was there.
        from ray._private.utils import get_ray_address_file

        self._address_file = Path(get_ray_address_file(None))
        self._address_before = self._address_file.read_text() if self._address_file.exists() else None
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "gcs_server_port": free_port(), "include_dashboard": True,
            "dashboard_host": "127.0.0.1", "dashboard_port": dashboard, "temp_dir": self.temp_dir,
            "ray_client_server_port": free_port(), "dashboard_agent_listen_port": free_port()})
        self.address = self.cluster.address

    def add_node(self, wait: bool = True, **resources: float):
        """A node with one CPU and ``resources``; ``wait=False``: ``cluster._wait_for_node(node)`` later."""
        return self.cluster.add_node(wait=wait, num_cpus=1, resources=resources, temp_dir=self.temp_dir)

    def actors(self, class_name: str, *, alive: bool = True) -> list[dict[str, Any]]:
        from ray.util.state import list_actors

        filters = [("class_name", "=", class_name)] + ([("state", "=", "ALIVE")] if alive else [])
        return [a if isinstance(a, dict) else a.__dict__
                for a in list_actors(address=self.state_url, filters=filters, detail=True, limit=1000,
                                     raise_on_missing_output=False)]

    def node_of(self, node_id: str):
        return next(n for n in self.cluster.worker_nodes if n.node_id == node_id)

    def lose(self, node) -> float:
        """Remove ``node`` as if its machine vanished; returns the time it went (monotonic)."""
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        doomed = [raylet, *raylet.children(recursive=True)]
        went = time.monotonic()
        self.cluster.remove_node(node, allow_graceful=False)
        for p in doomed:  # a worker's children (a vLLM engine core) outlive the raylet's SIGKILL
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(doomed, timeout=10)
        return went

    def close(self) -> None:
        import ray

        ray.shutdown()
        mine = [p for p in psutil.Process().children(recursive=True) if p.pid not in self._before]
        try:
            self.cluster.shutdown()
        finally:
            # The dashboard's module processes survive Cluster.shutdown (re-parented to init): they
            # carry our RAY_API_SERVER_ADDRESS.
            for p in psutil.process_iter(["cmdline"]):
                try:
                    if "ray" in " ".join(p.info["cmdline"] or []) \
                            and p.environ().get("RAY_API_SERVER_ADDRESS") == self.state_url:
                        mine.append(p)
                except psutil.Error:
                    continue
            for p in mine:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(mine, timeout=10)
            import shutil

            shutil.rmtree(self.temp_dir, ignore_errors=True)
            if self._address_before is not None:
                self._address_file.write_text(self._address_before)
            else:
                self._address_file.unlink(missing_ok=True)


def studio_home(root: Path, model: Path | None):
    """A fresh STUDIO_HOME (SQLite, artifacts, MLflow) with the tiny model and the toy datasets;
    STUDIO_HOME is set in this process's environment (Ray's processes inherit it, as from
    ``studio up``) and the studio's other locations are unset, so they default under it."""
    from studio.models.tiny import make_tiny
    from studio.settings import StudioSettings
    from studio.store import db as store_db
    from studio.train.toy_data import ingest_toy_datasets

    os.environ["STUDIO_HOME"] = str((root / "project" / ".studio").resolve())
    for var in ("STUDIO_DATABASE_URL", "STUDIO_ARTIFACTS_URI", "STUDIO_MLFLOW_URI", "STUDIO_REDIS_URL",
                "STUDIO_ADMIN_KEY"):
        os.environ.pop(var, None)
    settings = StudioSettings()
    store_db.init_db(settings.db_url)
    settings.models_dir.mkdir(parents=True)
    if model is not None:
        (settings.models_dir / "tiny").symlink_to(Path(model).resolve())
    else:
        make_tiny(settings.models_dir / "tiny")
    ingest_toy_datasets(settings, root / "data")
    return settings


# ---------------------------------------------------------------- training

def train_scenario(settings, cluster: LocalCluster | None = None, max_steps: int = 30, every: int = 5,
                   workers: int = 2) -> dict[str, Any]:
    """The training scenario on ``cluster`` (its training nodes are added here), else on a cluster
    of its own; ``settings``: the STUDIO_HOME from ``studio_home``."""
    from sqlalchemy import func, select

    from studio.registry.versions import get_version
    from studio.store.db import session_scope
    from studio.store.models import Job, JobMetric, ModelVersion

    work = settings.home_abs.parent.parent
    t_start = time.monotonic()
    own = cluster is None
    if own:
        cluster = LocalCluster(head_cpus=2)  # nothing trains on the head: it has no `training`
    proc = None
    log = work / "entrypoint.log"
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
        env.update(STUDIO_HOME=str(settings.home_abs), RAY_ADDRESS=cluster.address, PYTHONUNBUFFERED="1",
                   STUDIO_TRAIN_WORKER_RESOURCES='{"training": 1}')
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "studio.train.run", "--recipe",
                 str(REPO / "configs" / "train" / "sft_reverse_tiny.yaml"), f"hyper.max_steps={max_steps}",
                 f"checkpoint.every_steps={every}", "checkpoint.keep=2", f"hyper.logging_steps={every}",
                 "hyper.batch_size=8", f"resources.num_workers={workers}", "resources.max_worker_failures=2",
                 "eval_after=null"],
                cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        # The nodes join while the driver starts (Ray Train waits for resources it cannot place yet):
        # a node per worker and one spare for the lost one's.
        nodes = [cluster.add_node(wait=False, training=1) for _ in range(workers + 1)]
        for node in nodes:
            cluster.cluster._wait_for_node(node, timeout=120)  # what add_node(wait=True) does

        def running(what: str):
            if proc.poll() is not None:
                raise RuntimeError(f"the job ended before {what}:\n{tail(log)}")

        def group():  # the workers, looked up before the checkpoint so the node goes right after it
            running("its workers started")
            found = cluster.actors("RayTrainWorker")
            return found if len(found) == workers and all(a.get("pid") for a in found) else None

        first = wait_for(group, 240, f"{workers} live Ray Train workers", 0.5)
        assert len({a["node_id"] for a in first}) == workers, f"expected a worker per node: {first}"
        titles = []  # Ray's process title names the class: these are the run's Ray Train workers
        for a in first:
            try:
                titles.append("RayTrainWorker" in " ".join(psutil.Process(int(a["pid"])).cmdline()))
            except psutil.Error:
                titles.append(False)

        def checkpoint():
            running("its first checkpoint")
            with session_scope(settings.db_url) as s:
                job = s.scalars(select(Job)).first()
                return job.checkpoint_uri if job is not None else None

        first_checkpoint = wait_for(checkpoint, 240, "the job's first checkpoint", 0.1)
        lost_node = first[0]["node_id"]
        went = cluster.lose(cluster.node_of(lost_node))
        say(f"first checkpoint {first_checkpoint}; lost node {lost_node[:8]} under one of {workers} workers")
        before = {a["actor_id"] for a in first}

        def placed():  # the new group's workers, placed on a node; any state: a short run may be over
            return [a for a in cluster.actors("RayTrainWorker", alive=False)
                    if a["actor_id"] not in before and a.get("node_id")]

        def regrouped():
            new = placed()
            if len(new) >= workers:
                return new
            if proc.poll() is not None:
                time.sleep(1)  # the state API may lag the run's end by a moment: look once more
                new = placed()
                if len(new) < workers:
                    raise RuntimeError(f"the job ended (exit {proc.returncode}) without a new worker group: "
                                       f"did it finish before the node went? (more --max-steps)\n{tail(log)}")
            return new if len(new) >= workers else None

        new = wait_for(regrouped, 240, f"{workers} new Ray Train workers", 0.5)
        worker_back_s = time.monotonic() - went
        proc.wait(timeout=420)
        total_s = time.monotonic() - t_start
        with session_scope(settings.db_url) as s:
            job = s.scalars(select(Job)).one()
            resumed = s.execute(select(JobMetric.id, JobMetric.value).where(
                JobMetric.job_id == job.id, JobMetric.key == "resumed_from_step")).all()
            losses = s.execute(select(JobMetric.id, JobMetric.step).where(
                JobMetric.job_id == job.id, JobMetric.key == "loss")).all()
            registered = s.scalar(select(func.count()).select_from(ModelVersion).where(
                ModelVersion.job_id == job.id))
            model_name = (job.result or {}).get("model")
            mv_metrics = get_version(s, model_name).metrics if model_name else {}
            result = {"job_status": job.status, "job_error": job.error, "attempts": job.attempts,
                      "global_step": (job.result or {}).get("metrics", {}).get("global_step"),
                      "model": model_name}
        after = sorted(step for i, step in losses if resumed and i > resumed[0][0])
        return {
            **result, "exit_code": proc.returncode, "max_steps": max_steps, "checkpoint_every_steps": every,
            "logging_steps": every, "workers": workers, "worker_nodes_before": [a["node_id"] for a in first],
            "workers_titled_RayTrainWorker": all(titles),
            "first_checkpoint": first_checkpoint, "lost_node": lost_node,
            "resumed_on_nodes": sorted({a["node_id"] for a in new}),
            "resumed_from_step": [int(v) for _, v in resumed],
            "loss_steps_after_resume": after,
            "registered_metrics": {k: mv_metrics.get(k) for k in ("global_step", "resumed_from_step")},
            "registrations": registered,
            "worker_back_after_s": round(worker_back_s, 1), "scenario_s": round(total_s, 1),
            "nodes": {"head": {"CPU": cluster.head_cpus}, "workers": [{"CPU": 1, "training": 1}] * len(nodes)},
            "log_tail": tail(log, 15) if proc.returncode else None,
        }
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if own:
            cluster.close()
        from studio.store import db as store_db

        store_db.get_engine(settings.db_url).dispose()
        store_db.get_engine.cache_clear()


# ---------------------------------------------------------------- serving

class Clients:
    """``n`` threads streaming chat completions with the official client until ``stop``; each
    request's outcome is recorded (monotonic start/end, ok / error with its body / timeout)."""

    def __init__(self, url: str, key: str, n: int, timeout_s: float, max_tokens: int, backoff_s: float):
        import openai

        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=timeout_s)
        self.n, self.max_tokens, self.backoff_s = n, max_tokens, backoff_s
        self.results: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]

    def start(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=timeout_s)

    def answered(self, since: float) -> int:
        """How many clients had an answer to a request they sent after ``since`` (monotonic)."""
        with self._lock:
            return len({r["client"] for r in self.results if r["outcome"] == "ok" and r["start"] > since})

    def _loop(self, client: int) -> None:
        while not self._stop.is_set():
            r = self.one() | {"client": client}
            with self._lock:
                self.results.append(r)
            if r["outcome"] != "ok":
                time.sleep(self.backoff_s)  # a client that honours Retry-After, roughly

    def one(self) -> dict[str, Any]:
        import openai

        start, tokens = time.monotonic(), 0
        r: dict[str, Any] = {"start": start}
        try:
            stream = self.client.chat.completions.create(
                model="tiny", messages=PROMPT, max_tokens=self.max_tokens, stream=True,
                extra_body={"ignore_eos": True})
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    tokens += 1
            r.update(outcome="ok")
        except openai.APITimeoutError as e:
            r.update(outcome="timeout", error=str(e))
        except openai.APIStatusError as e:  # an HTTP error status, its body parsed
            r.update(outcome="error", status=e.status_code, body=e.body,
                     retry_after=e.response.headers.get("retry-after"))
        except openai.APIError as e:  # an error event inside the stream (body) or a cut (no body)
            r.update(outcome="error", status=None, body=e.body, error=f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - a broken stream surfaces as httpx's own errors
            r.update(outcome="error", status=None, body=None, error=f"{type(e).__name__}: {e}")
        r.update(end=time.monotonic(), tokens=tokens)
        return r


def openai_error_body(body: Any) -> bool:
    """What the openai client hands over as an error's body: OpenAI's ``error`` object."""
    return isinstance(body, dict) and isinstance(body.get("message"), str) and "type" in body


def serve_prepare(settings) -> str:
    """An admin key for the clients, and Serve's env vars in this process's environment: call it
    before the cluster starts (the replicas read the studio's settings from the environment Ray
    starts with, as under ``studio up``)."""
    from studio.keys import create_key
    from studio.stack import serve_env
    from studio.store.db import session_scope

    with session_scope(settings.db_url) as s:
        key, _ = create_key(s, "node-loss", "admin")
    os.environ.update(serve_env(settings))
    return key


def serve_scenario(settings, key: str, cluster: LocalCluster | None = None, clients: int = 8,
                   max_tokens: int = 32, client_timeout_s: float = 240, backoff_s: float = 1.0) -> dict[str, Any]:
    """The serving scenario on ``cluster`` (a head alone so far), else on a cluster of its own."""
    import httpx
    import ray
    from ray import serve

    from studio.serving.config import deployment_name

    t_start = time.monotonic()
    own = cluster is None
    if own:
        cluster = LocalCluster(head_cpus=4)
    load = node_a = node_b = None
    try:
        ray.init(address=cluster.address, logging_level="ERROR")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # One HTTP front door, on the head: every "node" shares this machine's ports.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        from ray.serve.api import _run as serve_run

        from deployments.app import build_app

        model_name = deployment_name("tiny")
        # Not serve.run: it waits for the app to be RUNNING, and the replica waits for node A.
        serve_run(build_app({"scheduler": {"enabled": False}, "gateway": {"enabled": False}, "models": [{
            "engine": {"model": str(settings.models_dir / "tiny"), "served_model_name": "tiny",
                       "dtype": "float32", "max_model_len": 256, "max_num_seqs": 8, "kv_cache_space_gib": 1,
                       "seed": 0},
            "num_replicas": 1, "num_cpus": 1, "resources": {"serving": 1}}]}),
            name="studio", route_prefix="/", _blocking=False)
        # The head has no `serving`: the ingress and Router land there (they run before any other
        # node exists), the model's replica waits for a node that offers it.
        def light_running():
            app = serve.status().applications.get("studio")
            light = {n: d for n, d in (app.deployments if app is not None else {}).items() if n != model_name}
            return len(light) >= 2 and all(d.replica_states.get("RUNNING") for d in light.values())

        wait_for(light_running, 120, "the ingress and the Router on the head")
        node_a = cluster.add_node(serving=1)
        replica_class = f"ServeReplica:studio:{model_name}"

        def replica_placed():  # on A, the only node with `serving`: the standby may join now
            return [a for a in cluster.actors(replica_class, alive=False) if a["node_id"] == node_a.node_id]

        wait_for(replica_placed, 120, "the tiny model's replica placed on node A")
        node_b = cluster.add_node(serving=1)  # the standby, joining while the engine loads

        def replicas_running():
            app = serve.status().applications.get("studio")
            if app is not None and app.status == "DEPLOY_FAILED":
                raise RuntimeError(f"the studio app failed to deploy: {app.message}")
            d = app.deployments.get(model_name) if app is not None else None
            return app is not None and app.status == "RUNNING" and d is not None \
                and d.replica_states == {"RUNNING": 1}

        wait_for(replicas_running, 300, "the tiny model's replica on node A")
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200, 60, "/healthz")
        replica = cluster.actors(replica_class)
        assert len(replica) == 1 and replica[0]["node_id"] == node_a.node_id, replica
        deployed_s = time.monotonic() - t_start

        load = Clients(url, key, clients, client_timeout_s, max_tokens, backoff_s).start()
        streaming = time.monotonic()
        # Every client has had an answer: all streaming when the node goes.
        wait_for(lambda: load.answered(since=0) == clients, 120, "an answer to each client", 0.1)
        warm_s = time.monotonic() - streaming
        say(f"{clients} clients streaming; losing node {node_a.node_id[:8]} under the replica")
        went = cluster.lose(node_a)
        wait_for(lambda: load.answered(since=went) > 0, 300, "an answer after the node was lost", 0.2)
        try:  # and soon each client: then stop (not asserted: summarize counts what came)
            wait_for(lambda: load.answered(since=went) == clients, 60, "an answer to each client again", 0.2)
        except TimeoutError:
            pass
        load.stop(client_timeout_s + 10)
        replica = cluster.actors(replica_class)
        return summarize(load.results, went) | {
            "clients": clients, "clients_answered_after_loss": load.answered(since=went),
            "max_tokens": max_tokens, "client_timeout_s": client_timeout_s,
            "client_max_retries": 0, "backoff_after_failure_s": backoff_s, "warm_s": round(warm_s, 1),
            "lost_node": node_a.node_id, "replica_now_on": [a["node_id"] for a in replica],
            "standby_node": node_b.node_id, "deployed_in_s": round(deployed_s, 1),
            "scenario_s": round(time.monotonic() - t_start, 1),
            "nodes": {"head": {"CPU": cluster.head_cpus}, "workers": [{"CPU": 1, "serving": 1}] * 2},
        }
    finally:
        if load is not None:
            load.stop(1)
        if own:
            try:
                serve.shutdown()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            cluster.close()
        else:
            # The cluster goes on (training next): its serving nodes go, the engine with them, at
            # once (a graceful Serve shutdown waits out the replica's). Serve's controller, proxy,
            # ingress and Router stay idle on the head; the replica it wants has no node to run on.
            for node in (node_a, node_b):
                if node is not None and node in cluster.cluster.worker_nodes:
                    cluster.lose(node)


def summarize(results: list[dict[str, Any]], went: float) -> dict[str, Any]:
    before = [r for r in results if r["end"] < went]
    failed = [r for r in results if r["outcome"] != "ok"]
    ok_after = [r for r in results if r["outcome"] == "ok" and r["start"] > went]
    first_ok = min((r["end"] for r in ok_after), default=None)
    spanning = [r for r in results if r["start"] <= went <= r["end"]]
    return {
        "requests": len(results), "ok": len(results) - len(failed), "ok_before_loss": sum(
            r["outcome"] == "ok" for r in before),
        "in_flight_at_loss": len(spanning),
        "in_flight_at_loss_ok": sum(r["outcome"] == "ok" for r in spanning),
        "failed": len(failed),
        "failed_with_openai_error_body": sum(openai_error_body(r.get("body")) for r in failed),
        "timed_out": sum(r["outcome"] == "timeout" for r in results),
        "failure_statuses": sorted({str(r.get("status")) for r in failed}),
        "failures": [{"at_s": round(r["end"] - went, 2), "status": r.get("status"),
                      "retry_after": r.get("retry_after"), "body": r.get("body"), "error": r.get("error")}
                     for r in failed][:40],
        "recovery_s": round(first_ok - went, 1) if first_ok is not None else None,
        "max_latency_s": round(max(r["end"] - r["start"] for r in results), 1) if results else None,
    }


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["train", "serve", "all"])
    parser.add_argument("--out", required=True, help="the JSON report")
    parser.add_argument("--model", type=Path, help="a tiny model directory (default: built with make_tiny)")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temp dir)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers, one per node")
    parser.add_argument("--every", type=int, default=5, help="checkpoint every N steps")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="node-loss-"))
    report: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
        "ran": ("serve then train on one cluster and one STUDIO_HOME" if args.which == "all" else
                f"{args.which} alone") + ", one engine at most"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    status = 0
    settings = studio_home(work / "home", args.model)
    key = serve_prepare(settings) if args.which != "train" else None
    started = time.monotonic()
    cluster = LocalCluster(head_cpus=4) if args.which == "all" else None
    if cluster is not None:
        report["cluster_start_s"] = round(time.monotonic() - started, 1)
    try:
        for which in (["serve", "train"] if args.which == "all" else [args.which]):
            say(f"{which} scenario")
            try:
                if which == "train":
                    report["train"] = train_scenario(settings, cluster, args.max_steps, args.every, args.workers)
                else:
                    report["serve"] = serve_scenario(settings, key, cluster, args.clients)
            except Exception as e:  # noqa: BLE001 - the report says which scenario broke and how
                report[which] = {"error": f"{type(e).__name__}: {e}"}
                status = 1
            report["loadavg_end"] = os.getloadavg()
            out.write_text(json.dumps(report, indent=2, default=str) + "\n")
            say(f"{which}: {json.dumps({k: v for k, v in report[which].items() if k not in ('failures', 'log_tail')}, default=str)}")
    finally:
        if cluster is not None:
            cluster.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
