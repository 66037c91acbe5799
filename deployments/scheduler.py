"""JobScheduler: the always-on half of training. One small replica runs ``reconcile_once`` every
``interval_s`` in a background task; the training itself runs as Ray Jobs, never in Serve, so a
crashing job cannot take the ingress (or this replica) down with it. The same pass then runs the
loops' runner (``studio.loops.runner``): each active loop generation moves on from its stored state,
with the loop's outside effects (``ServiceActions``) checking served names through the Gateway.

It keeps no state of its own (see ``studio.jobs.scheduler``): Serve may restart it at any time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve

from studio.errors import Unavailable
from studio.evals.gate import advance_after_training
from studio.jobs import ray_jobs
from studio.jobs.scheduler import reconcile_once
from studio.jobs.submission import SchedulerConfig
from studio.loops.actions import ServiceActions
from studio.loops.runner import Runner
from studio.registry.mlflow_mirror import MirrorPass
from studio.settings import StudioSettings

logger = logging.getLogger("ray.serve")


@serve.deployment(name="JobScheduler", num_replicas=1, max_ongoing_requests=16,
                  ray_actor_options={"num_cpus": 0.05})
class JobScheduler:
    async def __init__(self, config: SchedulerConfig | None = None, gateway: Any = None):
        self._config = config or SchedulerConfig()
        self._gateway = gateway  # the Gateway's handle: the promotion gate asks it for model names
        self._settings = StudioSettings()  # from the STUDIO_* env vars build_app forwards
        self._client = None
        self._loops = Runner(self._settings, ServiceActions(
            models_available=self._served_models if gateway is not None else None,
            judge_chat=self._judge_chat if gateway is not None else None))
        self._last_loop_pass: str | None = None
        self._mirror = MirrorPass(self._settings)  # MLflow's registry catching up with ours
        self._passes = 0
        self._last_pass_at: float | None = None
        self._last_error: str | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                # Blocking HTTP and SQL: off the replica's event loop, which answers health checks.
                report = await asyncio.to_thread(self._pass)
                self._last_error = "; ".join(report.errors) or None
                if report.changed():
                    logger.info("scheduler pass: %s", report)
            except Exception as e:  # noqa: BLE001 — the loop must outlive any one bad pass
                self._last_error = f"{type(e).__name__}: {e}"
                self._client = None  # reconnect: the cluster's Jobs API may have moved
                logger.exception("scheduler pass failed; retrying in %.1f s", self._config.interval_s)
            self._passes += 1
            self._last_pass_at = time.time()
            await asyncio.sleep(self._config.interval_s)

    def _pass(self):
        if self._client is None:
            self._client = ray_jobs.jobs_client(self._settings, self._config.ray_address)
        report = reconcile_once(self._settings, self._client, self._config,
                                models_available=self._served_models if self._gateway else None,
                                after_training=advance_after_training)
        try:  # the loops move after the jobs they wait for did
            loops = self._loops.run_pass()
        except Exception as e:  # noqa: BLE001 — the jobs' pass stands; the next pass tries the loops again
            report.errors.append(f"loops: {type(e).__name__}: {e}")
            logger.exception("loop pass failed")
            return report
        finally:
            self._mirror_pass()
        report.errors.extend(loops.errors)
        if loops.started or loops.moves:
            self._last_loop_pass = "; ".join(loops.started + loops.moves)[:2000]
            logger.info("loop pass: started %s, moved %s", loops.started, loops.moves)
        return report

    def _mirror_pass(self) -> None:
        # MLflow down is logged by the pass itself (once per outage) and shown in status(); it is
        # not a scheduler error.
        try:
            self._mirror.run()
        except Exception:  # noqa: BLE001 — e.g. the studio's database briefly unreachable: next interval
            logger.exception("MLflow registry mirror pass failed")

    def _served_models(self) -> list[str]:
        # Called from the pass's worker thread, where a handle's response may be waited on. A
        # failure is the one job's (StudioError), as it was over HTTP: the pass goes on.
        try:
            body = self._gateway.models.remote().result(timeout_s=30)
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"cannot check the model names: the gateway answered {type(e).__name__}: {e}",
                              "check the Gateway deployment (`serve status`); the next pass retries") from e
        return [m["id"] for m in body.get("data", [])]

    async def _judge_chat(self, body: dict[str, Any], ctx: dict[str, Any]):
        """The gateway's chat for the shadow's judge (``studio.loops.shadow``), as the loop owner's
        key (``ctx``): awaited in the pass thread's own event loop, so the handle is waited on in a
        worker thread."""
        return await asyncio.to_thread(lambda: self._gateway.chat.remote(body, ctx).result(timeout_s=120))

    async def status(self) -> dict[str, Any]:
        return {"alive": not self._task.done(), "passes": self._passes, "last_pass_at": self._last_pass_at,
                "last_error": self._last_error, "interval_s": self._config.interval_s,
                "last_loop_moves": self._last_loop_pass,
                "mlflow_mirror": {"last_error": self._mirror.last_error, "last_sync": self._mirror.last_report},
                "max_concurrent_jobs": self._config.max_concurrent_jobs}

    def check_health(self) -> None:
        # Serve replaces the replica when the loop has died (it only ends on a bug).
        if self._task.done():
            why = "cancelled" if self._task.cancelled() else repr(self._task.exception())
            raise RuntimeError(f"the reconcile loop stopped: {why}")
