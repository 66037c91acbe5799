"""GatewayService: what the ``Gateway`` Serve deployment does per call, testable without Serve.

Per request: check the key's limits and the job's concurrency cap → answer from cache if the
request is deterministic and seen before → else walk the model group and its fallbacks: studio
groups go through ``deployments.router_client.RouterClient`` (no HTTP hop: the Router names the model
deployment, which answers straight to the gateway; every sampling parameter passed through
untouched), external groups go through ``litellm.Router`` (retries with backoff, cooldown
of failing deployments, timeouts, load balancing, LiteLLM's price map) → attach
``studio_gateway`` (cache_hit, cost_usd, model_group, deployment, latency_ms) → queue a usage row.

Every outcome is ``(status, body, headers)``; errors are OpenAI-shaped bodies whose message names
the problem and the fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from studio.errors import StudioError
from studio.gateway.cache import cache_key, is_cacheable
from studio.gateway.limits import KeyLimits, Limiter, RateLimited, SpentCache
from studio.gateway.providers import UpstreamError, build_llm_router, call_provider
from studio.gateway.request import RequestCaps, parse_request
from studio.gateway.spec import GatewaySpec, GroupSpec, Provider
from studio.gateway.store import KVStore
from studio.gateway.usage import UsageRow, UsageWriter

logger = logging.getLogger("studio.gateway")
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_error", 503: "service_unavailable", 504: "timeout"}


@dataclass
class CallContext:
    """Who is calling: the authenticated key (with its limits), the service and the job.
    ``principal_id`` is the key whose cache entries these are: a job key's submitter."""

    key: KeyLimits
    service: str = "unknown"
    job_id: str | None = None
    job_concurrency: int | None = None
    principal_id: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CallContext:
        key = KeyLimits(d.get("key_id"), d.get("key_name"), d.get("rpm"), d.get("tpm"),
                        d.get("budget_usd"))
        principal = d.get("principal_id", d.get("key_id"))
        return cls(key, d.get("service") or "unknown", d.get("job_id"), d.get("job_concurrency"),
                   principal)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"),
                      "param": None, "code": status}}


def _error_headers(e: StudioError) -> dict[str, str]:
    """A refusal over a limit says when to come back; every other error is final: the gateway
    has already fallen back across deployments and retried upstream, so `x-should-retry: false`
    keeps the ``openai`` SDK (it retries 408/409/5xx by default) from multiplying a 504's wait."""
    if isinstance(e, RateLimited):
        return {"Retry-After": str(e.retry_after_s)}
    return {"x-should-retry": "false"}


class GatewayService:
    def __init__(self, spec: GatewaySpec, studio_router: Any | None, db_url: str,
                 redis_url: str | None = None, caps: RequestCaps | None = None):
        self.spec = spec
        self.caps = caps or RequestCaps()
        # deployments.router_client.RouterClient: routes by the studio Router, answers straight from
        # the model deployments
        self.studio_router = studio_router
        self.store = KVStore(redis_url, spec.cache.namespace, spec.cache.max_entries)
        self.limiter = Limiter(self.store)
        self.usage = UsageWriter(db_url)
        self.db_url = db_url
        self._groups: dict[str, list[GroupSpec]] = {}
        for g in spec.groups:
            self._groups.setdefault(g.name, []).append(g)
        self._spent = SpentCache(db_url)
        self.llm = build_llm_router(spec)

    # ---- public ------------------------------------------------------------------------------
    async def models(self) -> dict[str, Any]:
        now = int(time.time())
        data = [{"id": name, "object": "model", "created": now, "owned_by":
                 self._groups[name][0].provider.value} for name in sorted(self._groups)]
        if self.spec.studio_models.enabled and self.studio_router is not None:
            listed = await self.studio_router.models()
            data += [m for m in listed["data"] if m["id"] not in self._groups]
        return {"object": "list", "data": data}

    async def handle(self, endpoint: str, body: Any, ctx: dict[str, Any] | CallContext
                     ) -> tuple[int, dict[str, Any], dict[str, str]]:
        ctx = ctx if isinstance(ctx, CallContext) else CallContext.from_dict(ctx)
        start = time.perf_counter()
        group = body.get("model") if isinstance(body, dict) else None
        row = UsageRow(service=ctx.service, endpoint=endpoint, model_group=str(group or "?"),
                       latency_ms=0.0, key_id=ctx.key.key_id, key_name=ctx.key.key_name,
                       job_id=ctx.job_id)
        job_slot = False
        try:
            body = self._check_body(endpoint, body)
            await self.limiter.admit(ctx.key, await self._spent_usd(ctx.key))
            job_slot = await self.limiter.acquire_job(
                ctx.job_id, ctx.job_concurrency or self.spec.default_job_concurrency,
                scope=ctx.key.key_id)
            out, headers = await self._answer(endpoint, body, row, start, ctx.principal_id)
            await self.limiter.count_tokens(ctx.key, row.prompt_tokens + row.completion_tokens)
            return 200, out, headers
        except StudioError as e:
            row.status, row.error = e.status_code, str(e)[:1024]
            return e.status_code, error_body(e.status_code, str(e)), _error_headers(e)
        finally:
            if job_slot:
                await self.limiter.release_job(ctx.job_id, scope=ctx.key.key_id)
            row.latency_ms = (time.perf_counter() - start) * 1000
            self.usage.record(row)

    async def stream(self, endpoint: str, body: Any, ctx: dict[str, Any] | CallContext):
        """A streamed call (``stream: true``) of a studio-served model: yields
        ``(status, error_body | None, headers)`` first, then — when status is 200 — the Router's
        SSE strings as they come. Limits, job caps, fallbacks before the first chunk (to other
        studio groups) and the usage row as in :meth:`handle`; never cached. External groups are
        not streamed (400 naming the fix)."""
        ctx = ctx if isinstance(ctx, CallContext) else CallContext.from_dict(ctx)
        start = time.perf_counter()
        group = body.get("model") if isinstance(body, dict) else None
        row = UsageRow(service=ctx.service, endpoint=endpoint, model_group=str(group or "?"),
                       latency_ms=0.0, key_id=ctx.key.key_id, key_name=ctx.key.key_name,
                       job_id=ctx.job_id)
        job_slot, gen = False, None
        try:
            try:
                body = self._check_body(endpoint, body, stream=True)
                # Every stream ends with its usage: the key's TPM and the usage row count it.
                body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
                await self.limiter.admit(ctx.key, await self._spent_usd(ctx.key))
                job_slot = await self.limiter.acquire_job(
                    ctx.job_id, ctx.job_concurrency or self.spec.default_job_concurrency,
                    scope=ctx.key.key_id)
                gen, first, meta, answered_by = await self._open_stream(endpoint, body, ctx.principal_id)
            except StudioError as e:
                row.status, row.error = e.status_code, str(e)[:1024]
                yield e.status_code, error_body(e.status_code, str(e)), _error_headers(e)
                return
            version = meta.get("studio_model_version", answered_by)
            row.model_group, row.deployment = answered_by, f"studio/{version}"
            headers = {"x-studio-model-version": str(version), "x-studio-cache": "miss",
                       "x-studio-model-group": answered_by}
            if answered_by != group:
                headers["x-studio-fallback-from"] = str(group)
            yield 200, None, headers
            chunk = first
            while True:
                if '"usage"' in chunk:
                    self._stream_usage(chunk, row)
                yield chunk
                try:
                    chunk = await gen.__anext__()
                except StopAsyncIteration:
                    break
        finally:
            if gen is not None:
                await gen.aclose()
            if job_slot:
                await self.limiter.release_job(ctx.job_id, scope=ctx.key.key_id)
            latency_s = time.perf_counter() - start
            if row.status == 200:
                entry = (self._groups.get(row.model_group) or [None])[0]
                price = (entry.price if entry and entry.price else None) \
                    or self.spec.studio_models.price
                row.cost_usd = price.cost(row.prompt_tokens, row.completion_tokens, latency_s)
                await self.limiter.count_tokens(ctx.key,
                                                row.prompt_tokens + row.completion_tokens)
            row.latency_ms = latency_s * 1000
            self.usage.record(row)

    async def _open_stream(self, endpoint: str, body: dict, owner: int | None = None):
        """(generator, first SSE chunk, Router meta, group that answers), walking the fallbacks
        until a studio model starts answering. ``owner``: the caller's principal key, recorded
        with the logged completion (its feedback is that key's)."""

        async def start(name: str):
            entries = self._groups.get(name)
            if entries is not None and entries[0].provider != Provider.studio:
                raise UpstreamError(f"group {name!r} is an external provider; the gateway "
                                    "streams only studio-served models", "drop `stream: true` "
                                    "for this group", status=400, fallback_ok=False)
            if entries is None and not self.spec.studio_models.enabled:
                raise self._unknown(name)
            model = entries[0].model if entries else name
            timeout = (entries[0].timeout_s if entries else None) or self.spec.router.timeout_s
            return (*await self._start_studio_stream(endpoint, name, model, body, timeout, owner),
                    name)

        return await self._with_fallbacks(body["model"], start)

    async def _start_studio_stream(self, endpoint: str, group: str, model: str, body: dict,
                                   timeout_s: float, owner: int | None = None):
        if self.studio_router is None:
            raise UpstreamError(f"group {group!r} is served by the studio Router, but this "
                                "studio serves no models", "add a models: section to the serve "
                                "config", status=503)
        gen = self.studio_router.stream(endpoint, {**body, "model": model}, owner_key_id=owner)

        async def head():
            meta = await gen.__anext__()
            if "error" in meta:
                return meta, None
            return meta, await gen.__anext__()

        try:
            meta, first = await asyncio.wait_for(head(), timeout_s)
        except asyncio.TimeoutError:
            await gen.aclose()
            raise UpstreamError(f"the studio model {model!r} did not start answering within "
                                f"{timeout_s:.0f} s", "raise timeout_s or add a fallback group",
                                status=504) from None
        except BaseException:
            await gen.aclose()
            raise
        err = meta if "error" in meta else first if isinstance(first, dict) else None
        if err is not None:
            await gen.aclose()
            status = (err.get("error") or {}).get("code")
            status = status if isinstance(status, int) and 400 <= status < 600 else 502
            if status == 404 and group == model and group not in self._groups:
                raise self._unknown(group, studio_too=True)
            raise UpstreamError(err["error"].get("message", "studio model error"), status=status,
                                fallback_ok=status >= 500 or status == 429)
        return gen, first, meta

    @staticmethod
    def _stream_usage(chunk: str, row: UsageRow) -> None:
        """Token counts from an SSE chunk carrying ``usage`` (``stream_options.include_usage``)."""
        for line in chunk.splitlines():
            if not line.startswith("data:") or '"usage"' not in line:
                continue
            try:
                usage = json.loads(line[5:].strip()).get("usage") or {}
            except ValueError:
                continue
            row.prompt_tokens = int(usage.get("prompt_tokens") or row.prompt_tokens)
            row.completion_tokens = int(usage.get("completion_tokens") or row.completion_tokens)

    def close(self) -> None:
        self.usage.close()
        # LiteLLM keeps every Router's callbacks (cooldowns among them) in global lists capped at
        # 100: a process that builds many gateways must unhook the ones it is done with.
        if self.llm is not None:
            self.llm.discard()

    # ---- steps -------------------------------------------------------------------------------
    def _check_body(self, endpoint: str, body: Any, stream: bool = False) -> dict[str, Any]:
        """The fields to forward: the caller's body, validated against the one request model
        (``studio.gateway.request``: unknown fields and caps are a 400). Nothing else of the
        caller's reaches a model call."""
        body = parse_request(endpoint, body, self.caps).fields()
        if body.get("stream") and not stream:
            raise StudioError("this gateway path answers whole responses, not streams",
                              "drop `stream: true`, or send it over HTTP to /gateway/v1, which "
                              "streams studio models")
        return body

    async def _spent_usd(self, key: KeyLimits) -> float | None:
        if key.budget_usd is None or key.key_id is None:
            return None
        return await self._spent.spent_usd(key.key_id) + self.usage.pending_cost(key.key_id)

    async def _answer(self, endpoint: str, body: dict, row: UsageRow, start: float,
                      scope: int | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        group = body["model"]
        ckey = None
        if self.spec.cache.enabled and is_cacheable(body):
            ckey = cache_key(self.spec.cache.namespace, endpoint, body, scope)
            cached = await self.store.get(ckey)
            if cached is not None:
                out = json.loads(cached)
                info = out["studio_gateway"]
                info.update(cache_hit=True, cost_usd=0.0,
                            latency_ms=round((time.perf_counter() - start) * 1000, 3))
                row.model_group, row.deployment, row.cache_hit = info["model_group"], \
                    info["deployment"], True
                return out, {"x-studio-cache": "hit"}
        out, answered_by, deployment, cost = await self._call_with_fallbacks(endpoint, body, scope)
        usage = out.get("usage") or {}
        row.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        row.completion_tokens = int(usage.get("completion_tokens") or 0)
        if cost is None:  # a studio group: priced by the config, not by LiteLLM's map
            price = (self._groups.get(answered_by) or [None])[0]
            price = (price.price if price and price.price else None) or self.spec.studio_models.price
            cost = price.cost(row.prompt_tokens, row.completion_tokens,
                              time.perf_counter() - start)
        row.model_group, row.deployment, row.cost_usd = answered_by, deployment, cost
        out["studio_gateway"] = {"cache_hit": False, "cost_usd": cost, "model_group": answered_by,
                                 "deployment": deployment,
                                 "latency_ms": round((time.perf_counter() - start) * 1000, 3)}
        if answered_by != group:
            out["studio_gateway"]["fallback_from"] = group
        if ckey is not None:
            await self.store.set(ckey, json.dumps(out), self.spec.cache.ttl_s)
        return out, {"x-studio-cache": "miss"}

    async def _call_with_fallbacks(self, endpoint: str, body: dict, owner: int | None = None):
        return await self._with_fallbacks(
            body["model"], lambda name: self._call_group(endpoint, name, body, owner))

    async def _with_fallbacks(self, group: str, attempt):
        """``await attempt(name)`` for the group, then its fallbacks, until one answers; the
        failures of every group tried are named in the error."""
        chain = [group, *self.spec.fallbacks.get(group, [])]
        failures = []
        for name in chain:
            try:
                return await attempt(name)
            except UpstreamError as e:
                failures.append(f"{name}: {e.problem}")
                if not e.fallback_ok or name == chain[-1]:
                    if len(chain) == 1:
                        raise
                    raise UpstreamError("; ".join(failures), e.fix, status=e.status_code,
                                        fallback_ok=False) from None
                logger.warning("gateway: group %s failed (%s); falling back", name, e.problem)
        raise AssertionError("unreachable")

    async def _call_group(self, endpoint: str, name: str, body: dict, owner: int | None = None):
        entries = self._groups.get(name)
        if entries is None:
            if self.spec.studio_models.enabled and self.studio_router is not None:
                return await self._call_studio(endpoint, name, name, body, owner=owner)
            raise self._unknown(name)
        if entries[0].provider == Provider.studio:
            timeout = entries[0].timeout_s or self.spec.router.timeout_s
            return await self._call_studio(endpoint, name, entries[0].model, body, timeout, owner)
        return await call_provider(self.llm, self.spec, endpoint, name, body)

    def _unknown(self, name: str, studio_too: bool = False) -> UpstreamError:
        groups = ", ".join(sorted(self._groups)) or "(none configured)"
        where = " and the studio Router serves no model of that name" if studio_too else ""
        return UpstreamError(f"unknown model group {name!r}{where}; groups: {groups}",
                             "pass one of those, a studio model from GET /gateway/v1/models, or "
                             "add the group to configs/gateway.yaml", status=404,
                             fallback_ok=False)

    async def _call_studio(self, endpoint: str, group: str, model: str, body: dict,
                           timeout_s: float | None = None, owner: int | None = None):
        if self.studio_router is None:
            raise UpstreamError(f"group {group!r} is served by the studio Router, but this "
                                "studio serves no models", "add a models: section to the serve "
                                "config", status=503)
        gen = self.studio_router.stream(endpoint, {**body, "model": model}, owner_key_id=owner)
        try:
            first, item = await asyncio.wait_for(self._two(gen),
                                                 timeout_s or self.spec.router.timeout_s)
        except asyncio.TimeoutError:
            raise UpstreamError(f"the studio model {model!r} did not answer within "
                                f"{timeout_s or self.spec.router.timeout_s:.0f} s",
                                "raise timeout_s or add a fallback group", status=504) from None
        err = (first if "error" in first else item if isinstance(item, dict) and "error" in item
               else None)
        if err is not None:
            status = (err.get("error") or {}).get("code")
            status = status if isinstance(status, int) and 400 <= status < 600 else 502
            if status == 404 and group == model and group not in self._groups:
                raise self._unknown(group, studio_too=True)
            raise UpstreamError(err["error"].get("message", "studio model error"), status=status,
                                fallback_ok=status >= 500 or status == 429)
        version = first.get("studio_model_version", model)
        item["studio_model_version"] = version
        return item, group, f"studio/{version}", None

    @staticmethod
    async def _two(gen):
        """(meta, body) from the studio model's stream. Like the /v1 route, stop the stream once
        the whole body is in instead of waiting for its end to travel back from the engine replica:
        the completion is logged either way."""
        try:
            first = await gen.__anext__()
            if "error" in first:
                return first, None
            return first, await gen.__anext__()
        finally:
            await gen.aclose()
