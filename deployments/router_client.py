"""``RouterClient``: the /v1 data path, in the process that serves the HTTP request (the ingress,
the gateway). It asks the Router (``deployments.router``) where a request goes, streams the answer
straight from that base model's ModelDeployment, and reports the outcome to the Router afterwards.

``RouterClient.stream(endpoint, body)`` is an async generator: the first item is
``{"studio_model_version": "name@N"}`` (or the base id; plus ``studio_experiment`` /
``studio_arm`` for an alias), then the engine's items — one dict (a whole JSON body; errors carry
``error.code`` = HTTP status) or SSE strings. When the name does not resolve, the only item is the
error dict. When the replica fails (its node lost, its actor dead: 503; anything else: 500) the
last item is OpenAI's error body: a dict before the first token, an SSE error event
(``data: {"error": …}``) after it, never a cut stream. Close it (``aclose``) to stop the engine
request.

Every routed request is reported: an answer goes to the completion log, a failure to
``request_failures`` (its version, arm, status, latency). A request the Router marked for the
shadow (``Target.shadow``: a loop's candidate in SHADOW) and without ``tools`` is mirrored to the
candidate *after* its caller's answer ended, in the background (at most ``MIRROR_MAX`` at once per
client, more are dropped and counted): the candidate's answer is never shown, logged as a
completion or rated; the pair (champion's answer, candidate's answer) is stored for the loop's judge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import grpc
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.engines.base import error_body
from deployments.routing import MODELS_HINT, REGISTRY_TTL_S, NameCache, Target
from studio.experiments.completions import ResponseCapture, prompt_text

logger = logging.getLogger("ray.serve")


class RouterClient:
    """The /v1 data path, in the process that serves the HTTP request (the ingress, the gateway):
    one call to the Router to learn where the request goes, then the answer streams straight
    from that base model's ModelDeployment; the outcome goes back to the Router afterwards, off
    the request path, in batches (``books``, every ``BOOKS_EVERY_S``).

    A request that names a served base id or a registry version (``name@N``) skips the ``route``
    call for ``REGISTRY_TTL_S`` after one was answered: both always mean the same weights (an
    experiment alias cannot contain ``@``), and the Router's sync keeps running on the other calls;
    such a request is counted in flight through the next batch. Registry names (their champion
    moves on promotion) and experiment aliases (sticky arms) are always routed."""

    BOOKS_EVERY_S = 0.05
    MIRROR_MAX = 4  # shadow mirrors in flight per client; more are dropped

    def __init__(self, router: DeploymentHandle):
        self.router = router
        self._models: dict[tuple[str, str], DeploymentHandle] = {}
        self._pinned = NameCache()  # base id / name@N → Target
        self._started: list[str] = []  # bases of requests started without `route`, not yet sent
        self._ended: list[dict[str, Any]] = []  # reports not yet sent
        self._timer: asyncio.Task | None = None
        self._sends: set[asyncio.Task] = set()
        self._mirrors: set[asyncio.Task] = set()
        self.mirrors_dropped = 0

    async def models(self) -> dict[str, Any]:
        return await self.router.models.remote()

    def _model(self, target: Target) -> DeploymentHandle:
        key = (target.deployment, target.app)
        handle = self._models.get(key)
        if handle is None:
            handle = serve.get_deployment_handle(*key).options(stream=True)
            self._models[key] = handle
        return handle

    async def _route(self, model: Any, user: Any) -> tuple[Target | dict, bool]:
        """Where the request goes, and whether that came from this client's cache."""
        hit = self._pinned.get(model)
        if hit is not None:
            self._started.append(hit.base)
            self._schedule()
            return hit, True
        target = await self.router.route.remote(model, user)
        # A base id or name@N (what answered is what was asked), never a name or an alias.
        if isinstance(target, Target) and target.experiment is None and target.label == model:
            self._pinned.put(model, target, REGISTRY_TTL_S)
        return target, False

    async def stream(self, endpoint: str, body: dict[str, Any], owner_key_id: int | None = None,
                     record: bool = True):
        """The answer to an OpenAI request body (see the module docstring for the items).
        ``owner_key_id``: the calling key's principal, recorded with the logged completion (only
        its owner may read or rate it). ``record=False`` (a shadow mirror): counted in the
        metrics, never logged."""
        started = time.perf_counter()
        target, cached = await self._route(body.get("model"), body.get("user"))
        if isinstance(target, dict):
            yield target
            return
        capture, ttft, done, gen = ResponseCapture(), None, False, None
        try:  # from here on, every way out reports to the Router (it counts this in flight)
            yield target.meta()
            request, adapter = {**body, "model": target.adapter_id or target.base}, None
            if target.adapter_id:
                adapter = {"id": target.adapter_id, "uri": target.uri, "label": target.label}
            gen = getattr(self._model(target), endpoint).remote(request, adapter)
            try:
                async for item in gen:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    capture.add(item)
                    # A whole body is the only item, and callers close us once they have it.
                    done = done or isinstance(item, dict)
                    if isinstance(item, dict) and (item.get("error") or {}).get("code") == 503:
                        self._pinned.pop(target.label, None)  # engine died? ask the Router
                    yield _relabel(item, target)
                done = True
            except Exception as e:  # the replica failed (the client leaving is a BaseException)
                self._pinned.pop(target.label, None)  # ask the Router next time
                gone = await self.router.gone.remote(target.base) if ttft is None else None
                if gone is None:
                    # A replica that died (its node lost, its process killed) or an engine that
                    # failed: OpenAI's error shape, never a cut stream or a bare 500.
                    err = replica_failure(target.base, e)
                    capture.error = err["error"]
                    if ttft is None:
                        yield err  # nothing sent yet: the ingress answers with its status
                    else:
                        logger.warning("a stream of %s broke after its first token: %s", target.base,
                                       err["error"]["message"])
                        yield f"data: {json.dumps(err)}\n\n"  # headers are sent: an error event
                    return
                if cached or gone["error"]["code"] == 503:
                    # The Router never saw this request (answer as it would now: 404), or the
                    # model is coming back or its engines died (503 + Retry-After).
                    capture.error = gone["error"]
                    yield gone
                    return
                # Evicted while this request waited for a replica: a clean, retryable 503.
                evicted = error_body(f"The model `{target.base}` was evicted before this request "
                                     f"was answered; retry, or {MODELS_HINT}", 503,
                                     "ServiceUnavailableError", "model")
                capture.error = evicted["error"]
                yield evicted
        finally:
            # Client gone (this generator closed or cancelled) or done: stop the engine request.
            if gen is not None:
                gen.cancel()
            self._report(endpoint, body, target, capture, started, ttft, done,
                         owner_key_id if record else False)
            if target.shadow and done and capture.error is None and capture.id:
                self._mirror(endpoint, body, target, capture)

    def _report(self, endpoint, body, target: Target, capture: ResponseCapture, started: float,
                ttft: float | None, done: bool, owner_key_id: int | None | bool = None) -> None:
        """``owner_key_id=False``: a mirror's report, for the metrics only."""
        latency = time.perf_counter() - started
        report: dict[str, Any] = {"target": target, "endpoint": endpoint, "ttft_s": ttft,
                                  "latency_s": latency, "done": done, "tokens": capture.tokens,
                                  "error_code": None if capture.error is None
                                  else _status(capture.error)}
        user = body.get("user")
        user = user if isinstance(user, str) else None
        if owner_key_id is False:
            pass
        elif capture.error is not None:  # routed, then failed: counted against its version
            report["failure"] = {
                "endpoint": endpoint, "requested_model": str(body.get("model"))[:256],
                "experiment": target.experiment, "arm": target.arm, "model_version": target.label,
                "error_code": report["error_code"],
                "error": str(capture.error.get("message") or "")[:1024],
                "latency_ms": round(latency * 1000, 3), "user": user, "owner_key_id": owner_key_id,
                "created_at": datetime.now(timezone.utc)}
        elif done and capture.id:
            prompt = body.get("messages") if endpoint == "chat" else body.get("prompt")
            report["record"] = {
                "id": capture.id, "endpoint": endpoint, "requested_model": str(body.get("model")),
                "experiment": target.experiment, "arm": target.arm,
                "model_version": target.label, "prompt": prompt,
                "prompt_text": prompt_text(endpoint, prompt), "response": capture.text,
                "latency_ms": round(latency * 1000, 3),
                "ttft_ms": round(ttft * 1000, 3) if ttft is not None else None,
                "output_tokens": capture.tokens, "user": user,
                "owner_key_id": owner_key_id, "created_at": datetime.now(timezone.utc)}
        self._ended.append(report)
        self._schedule()

    # ---- the shadow: a loop's candidate answers the same request, unseen ------------------------
    def _mirror(self, endpoint: str, body: dict[str, Any], target: Target,
                capture: ResponseCapture) -> None:
        if body.get("tools") or body.get("functions"):
            return  # a tool call's answer acts on the caller's world: never asked twice
        if len(self._mirrors) >= self.MIRROR_MAX:
            self.mirrors_dropped += 1
            return
        try:
            task = asyncio.get_running_loop().create_task(
                self._shadow_pair(endpoint, body, target, capture.text, capture.id))
        except RuntimeError:  # no running loop (a generator collected late): nothing mirrored
            return
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _shadow_pair(self, endpoint: str, body: dict[str, Any], target: Target,
                           champion_text: str, completion_id: str | None) -> None:
        request = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        request["model"] = target.shadow
        capture = ResponseCapture()
        try:
            async for item in self.stream(endpoint, request, record=False):
                capture.add(item)
        except Exception as e:  # noqa: BLE001 — a mirror never fails anything
            logger.warning("shadow mirror to %s failed: %s", target.shadow, e)
            return
        if capture.error is not None or not capture.id:
            return  # no answer: no pair (the candidate's errors show in the metrics)
        prompt = body.get("messages") if endpoint == "chat" else body.get("prompt")
        self._ended.append({"shadow": {
            "id": uuid.uuid4().hex, "generation_id": target.shadow_generation, "endpoint": endpoint,
            "champion": target.label, "candidate": target.shadow, "completion_id": completion_id,
            "prompt": prompt, "prompt_text": prompt_text(endpoint, prompt),
            "champion_response": champion_text, "candidate_response": capture.text,
            "created_at": datetime.now(timezone.utc)}})
        self._schedule()

    def _schedule(self) -> None:
        """Send the books after ``BOOKS_EVERY_S`` unless a send is already due. Without a running
        loop (a generator collected late) they wait for the next one."""
        if self._timer is not None and not self._timer.done():
            return
        try:
            self._timer = asyncio.get_running_loop().create_task(self._send_later())
        except RuntimeError:
            self._timer = None

    async def _send_later(self) -> None:
        await asyncio.sleep(self.BOOKS_EVERY_S)
        self._send()

    def _send(self) -> None:
        if not (self._started or self._ended):
            return
        started, ended, self._started, self._ended = self._started, self._ended, [], []

        async def send() -> None:
            try:
                await self.router.books.remote(started, ended)
            except Exception as e:  # noqa: BLE001 — the books must never fail a request
                why = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                logger.warning("reporting %d finished request(s) to the Router failed: %s",
                               len(ended), why)

        task = asyncio.get_running_loop().create_task(send())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def drain(self) -> None:
        """Send the books now and wait for every send so far (feedback on a just-answered
        completion)."""
        self._send()
        if self._sends:
            await asyncio.gather(*list(self._sends), return_exceptions=True)


# How a call to a replica fails when the replica is gone (its actor died, its node was lost, its
# gRPC channel dropped) rather than the engine answering an error: worth a retry, as Serve starts
# another replica.
REPLICA_GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError, grpc.aio.AioRpcError)


def replica_failure(base: str, exc: Exception) -> dict[str, Any]:
    """The OpenAI error body for a request whose ModelDeployment call failed: 503 when the replica
    went away (the client retries after Retry-After), else 500 naming the exception."""
    why = (str(exc).strip().splitlines() or [""])[0][:200]
    if isinstance(exc, REPLICA_GONE):
        return error_body(f"The replica serving `{base}` went away before it finished this request "
                          f"({type(exc).__name__}); another one is starting: retry in a few seconds",
                          503, "ServiceUnavailableError", "model")
    return error_body(f"The model `{base}` failed on this request ({type(exc).__name__}: {why}); "
                      "see the replica's log in the Ray dashboard", 500, "InternalServerError", "model")


def _status(error: dict[str, Any]) -> int:
    code = error.get("code")
    return code if isinstance(code, int) else 500


def _relabel(item: Any, target: Target) -> Any:
    """Show clients the name they can use (name@N), not the internal adapter id."""
    if isinstance(item, str):
        if target.adapter_id is None:
            return item
        return item.replace(f'"model":"{target.adapter_id}"', f'"model":"{target.label}"')
    if isinstance(item, dict) and "error" not in item:
        if target.adapter_id:
            item["model"] = target.label
        item.update(target.meta())
    return item
