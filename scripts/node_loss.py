"""Node loss, simulated: a multi-node Ray on this machine (``ray.cluster_utils.Cluster``) loses the
node under a training job, or under a serving replica, and the studio carries on (issue 24 item 8).

    .venv/bin/python scripts/node_loss.py all   --out docs/bench/node-loss.json
    .venv/bin/python scripts/node_loss.py train --out /tmp/train.json [--model DIR] [--work DIR]
    .venv/bin/python scripts/node_loss.py serve --out /tmp/serve.json [--clients 8]

A "node" is a raylet with its own resources; losing it is ``Cluster.remove_node`` without a
graceful drain, then SIGKILL of every process that was under that raylet (Ray workers and what
they started, a vLLM engine core included): what a machine that vanishes leaves, which is nothing.

- ``train``: head (no ``training`` resource: the job's driver and its Ray Train controller live
  there) + two nodes with ``training: 1`` (``STUDIO_TRAIN_WORKER_RESOURCES``). An SFT job of the
  tiny model (``python -m studio.train.run``, one Ray Train worker, a checkpoint every few steps on
  the artifact store, which every node reaches) runs on one of them; after its first checkpoint that
  node is removed. Ray Train (``resources.max_worker_failures``) starts the worker group again on the
  other node, from the latest checkpoint; the job registers its model once.
- ``serve``: head (Serve's controller and proxy, the studio's ingress and Router) + a node with
  ``serving: 1`` where the tiny model's replica (vLLM) runs; a second such node joins once it does
  (so the replica can only have landed on the first). ``--clients`` threads stream chat completions
  through ``/v1`` with the official ``openai`` client (no retries, a generous timeout); the replica's
  node is removed; Serve starts the replica on the other node. Reported: each request's outcome,
  failed requests (each must carry an OpenAI error body), requests that hit the client timeout
  (must be none) and the time to recovery (node removed → first answer to a request sent after it).

Only one vLLM engine ever runs: the replica's is killed with its node before Serve starts another.
The JSON states how it ran (load average, CPUs, steps, clients). Takes ~2-4 min on 2 cores.
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

    def add_node(self, **resources: float):
        return self.cluster.add_node(num_cpus=1, resources=resources, temp_dir=self.temp_dir)

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
    """A fresh STUDIO_HOME (SQLite, artifacts, MLflow) with the tiny model and the toy datasets."""
    from studio.models.tiny import make_tiny
    from studio.settings import StudioSettings
    from studio.store import db as store_db
    from studio.train.toy_data import ingest_toy_datasets

    settings = StudioSettings(home=root / "project" / ".studio", database_url=None, artifacts_uri=None,
                              mlflow_uri=None, redis_url=None, admin_key=None)
    store_db.init_db(settings.db_url)
    settings.models_dir.mkdir(parents=True)
    if model is not None:
        (settings.models_dir / "tiny").symlink_to(Path(model).resolve())
    else:
        make_tiny(settings.models_dir / "tiny")
    return settings, ingest_toy_datasets


# ---------------------------------------------------------------- training

def train_scenario(work: Path, model: Path | None, max_steps: int = 40, every: int = 5) -> dict[str, Any]:
    from sqlalchemy import func, select

    from studio.store.db import session_scope
    from studio.store.models import Job, JobMetric, ModelVersion

    settings, ingest = studio_home(work / "train", model)
    ingest(settings, work / "train" / "data")
    t_start = time.monotonic()
    cluster = LocalCluster(head_cpus=2)  # nothing trains on the head: it has no `training`
    proc = None
    log = work / "train" / "entrypoint.log"
    try:
        nodes = [cluster.add_node(training=1) for _ in range(2)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
        env.update(STUDIO_HOME=str(settings.home_abs), RAY_ADDRESS=cluster.address, PYTHONUNBUFFERED="1",
                   STUDIO_TRAIN_WORKER_RESOURCES='{"training": 1}')
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "studio.train.run", "--recipe",
                 str(REPO / "configs" / "train" / "sft_reverse_tiny.yaml"), f"hyper.max_steps={max_steps}",
                 f"checkpoint.every_steps={every}", "checkpoint.keep=2", f"hyper.logging_steps={every}",
                 "hyper.batch_size=8", "resources.num_workers=1", "resources.max_worker_failures=2",
                 "eval_after=null"],
                cwd=work / "train", env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def checkpoint():
            if proc.poll() is not None:
                raise RuntimeError(f"the job ended before its first checkpoint:\n{tail(log)}")
            with session_scope(settings.db_url) as s:
                job = s.scalars(select(Job)).first()
                return job.checkpoint_uri if job is not None else None

        first_checkpoint = wait_for(checkpoint, 240, "the job's first checkpoint", 0.2)
        workers = cluster.actors("RayTrainWorker")
        assert len(workers) == 1, f"expected one live Ray Train worker, found {workers}"
        lost_node = workers[0]["node_id"]
        say(f"first checkpoint {first_checkpoint}; losing node {lost_node[:8]} under the worker")
        went = cluster.lose(cluster.node_of(lost_node))

        def resumed_on():  # any state: a short run may be over before we look
            others = [a["node_id"] for a in cluster.actors("RayTrainWorker", alive=False)
                      if a["node_id"] != lost_node]
            return others[0] if others else None

        new_node = wait_for(resumed_on, 240, "a Ray Train worker on another node", 0.5)
        worker_back_s = time.monotonic() - went
        proc.wait(timeout=420)
        total_s = time.monotonic() - t_start
        with session_scope(settings.db_url) as s:
            job = s.scalars(select(Job)).one()
            resumed = s.execute(select(JobMetric.attempt, JobMetric.value).where(
                JobMetric.job_id == job.id, JobMetric.key == "resumed_from_step")).all()
            registered = s.scalar(select(func.count()).select_from(ModelVersion).where(
                ModelVersion.job_id == job.id))
            result = {"job_status": job.status, "job_error": job.error, "attempts": job.attempts,
                      "global_step": (job.result or {}).get("metrics", {}).get("global_step"),
                      "model": (job.result or {}).get("model")}
        return {
            **result, "exit_code": proc.returncode, "max_steps": max_steps, "checkpoint_every_steps": every,
            "first_checkpoint": first_checkpoint, "lost_node": lost_node, "resumed_on_node": new_node,
            "resumed_from_step": [int(v) for _, v in resumed], "registrations": registered,
            "worker_back_after_s": round(worker_back_s, 1), "scenario_s": round(total_s, 1),
            "nodes": {"head": {"CPU": 2}, "workers": [{"CPU": 1, "training": 1}] * len(nodes)},
            "log_tail": tail(log, 15) if proc.returncode else None,
        }
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
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
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]

    def start(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            r = self.one()
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


def serve_scenario(work: Path, model: Path | None, clients: int = 8, max_tokens: int = 32,
                   client_timeout_s: float = 240, warm_s: float = 5, after_s: float = 5,
                   backoff_s: float = 1.0) -> dict[str, Any]:
    import httpx
    import ray
    from ray import serve

    from studio.keys import create_key
    from studio.serving.config import deployment_name
    from studio.settings import StudioSettings
    from studio.stack import serve_env
    from studio.store.db import session_scope

    settings0, _ = studio_home(work / "serve", model)
    # The replicas read the studio's settings from the environment Ray starts with, as `studio up`.
    os.environ["STUDIO_HOME"] = str(settings0.home_abs)
    for var in ("STUDIO_DATABASE_URL", "STUDIO_ARTIFACTS_URI", "STUDIO_MLFLOW_URI", "STUDIO_REDIS_URL"):
        os.environ.pop(var, None)
    settings = StudioSettings()
    with session_scope(settings.db_url) as s:
        key, _ = create_key(s, "node-loss", "admin")
    os.environ.update(serve_env(settings))
    t_start = time.monotonic()
    cluster = LocalCluster(head_cpus=4)
    load = None
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

        def replicas_running():
            app = serve.status().applications.get("studio")
            if app is not None and app.status == "DEPLOY_FAILED":
                raise RuntimeError(f"the studio app failed to deploy: {app.message}")
            d = app.deployments.get(model_name) if app is not None else None
            return app is not None and app.status == "RUNNING" and d is not None \
                and d.replica_states == {"RUNNING": 1}

        wait_for(replicas_running, 300, "the tiny model's replica on node A")
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200, 60, "/healthz")
        node_b = cluster.add_node(serving=1)  # the standby: the replica can only be on A
        replica = [a for a in cluster.actors(f"ServeReplica:studio:{model_name}")]
        assert len(replica) == 1 and replica[0]["node_id"] == node_a.node_id, replica
        deployed_s = time.monotonic() - t_start

        load = Clients(url, key, clients, client_timeout_s, max_tokens, backoff_s).start()
        time.sleep(warm_s)
        say(f"{clients} clients streaming; losing node {node_a.node_id[:8]} under the replica")
        went = cluster.lose(node_a)

        def recovered():
            with load._lock:
                return any(r["outcome"] == "ok" and r["start"] > went for r in load.results)

        wait_for(recovered, 300, "an answer after the node was lost")
        time.sleep(after_s)
        load.stop(client_timeout_s + 10)
        replica = cluster.actors(f"ServeReplica:studio:{model_name}")
        return summarize(load.results, went) | {
            "clients": clients, "max_tokens": max_tokens, "client_timeout_s": client_timeout_s,
            "client_max_retries": 0, "backoff_after_failure_s": backoff_s, "warm_s": warm_s,
            "lost_node": node_a.node_id, "replica_now_on": [a["node_id"] for a in replica],
            "standby_node": node_b.node_id, "deployed_in_s": round(deployed_s, 1),
            "scenario_s": round(time.monotonic() - t_start, 1),
            "nodes": {"head": {"CPU": 4}, "workers": [{"CPU": 1, "serving": 1}] * 2},
        }
    finally:
        if load is not None:
            load.stop(1)
        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        cluster.close()


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
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=5, help="checkpoint every N steps")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="node-loss-"))
    report: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "ran": "each scenario alone, one engine at most"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    status = 0
    for which in (["train", "serve"] if args.which == "all" else [args.which]):
        say(f"{which} scenario")
        try:
            if which == "train":
                report["train"] = train_scenario(work / "t", args.model, args.max_steps, args.every)
            else:
                report["serve"] = serve_scenario(work / "s", args.model, args.clients)
        except Exception as e:  # noqa: BLE001 - the report says which scenario broke and how
            report[which] = {"error": f"{type(e).__name__}: {e}"}
            status = 1
        report["loadavg_end"] = os.getloadavg()
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        say(f"{which}: {json.dumps({k: v for k, v in report[which].items() if k not in ('failures', 'log_tail')}, default=str)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
