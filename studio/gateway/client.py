"""``studio.gateway.Client`` — the one way studio code calls a model.

Every internal caller (synthetic data, eval judges, GRPO judge rewards, the playground) calls models
through the gateway, never a provider or engine directly, so cost, cache, limits and fallbacks live
in one place::

    from studio.gateway import Client, GatewayError

    client = Client(service="eval", job_id="eval-3")
    body = client.chat("tiny", [{"role": "user", "content": "reverse: 1 2 3"}], max_tokens=8,
                       temperature=0)
    body["choices"][0]["message"]["content"]
    body["studio_gateway"]   # {"cache_hit", "cost_usd", "model_group", "deployment", "latency_ms"}
    await client.achat(...); client.completions(model, prompt, ...); await client.acompletions(...)
    client.models()          # ["tiny", "openai/gpt-4o-mini", ...] — the model groups

Contract
--------
* Transport: the pinned ``openai`` SDK (``OpenAI`` for sync calls, one ``AsyncOpenAI`` per event
  loop since httpx pools bind to their loop) against ``$STUDIO_GATEWAY_URL`` if set, else
  ``settings.base_url + "/gateway/v1"`` (the OpenAI-compatible surface of the Gateway deployment
  on the studio ingress). Requests go out as raw ``post``/``get`` calls, so every body field
  (vLLM's ``top_k``, ``structured_outputs``, ...) passes unchanged and the JSON body comes back as
  a dict.
* Auth: ``Authorization: Bearer <key>`` where the key is the ``api_key`` argument, else
  ``$STUDIO_API_KEY``, else ``$STUDIO_ADMIN_KEY``, else the admin key file ``$STUDIO_HOME/admin.key``
  written by ``studio up``. Inside a job (``$STUDIO_JOB_ID``, set by the scheduler, or a Ray job
  driver) only ``$STUDIO_API_KEY`` counts: a job spends on its submitter's key (the scheduler puts a
  key derived from it there), never on the admin key. The key is resolved at the first call.
* Tags: ``x-studio-service`` (``service``) and ``x-studio-job-id`` (``job_id``) on every call; they
  end up in the usage table (``GET /api/usage``, ``studio usage``). ``max_concurrency`` (optional) is
  sent as ``x-studio-job-concurrency``: the gateway caps in-flight calls of that job across replicas;
  the client additionally caps itself with a semaphore (a thread semaphore for sync calls, one
  asyncio semaphore per event loop) so a batch caller does not queue 429s. Async calls of a wide
  caller are spread over one HTTP connection pool per 8 calls in flight (see ``_POOL_WIDTH``).
* Returns: the OpenAI JSON body as a dict (``chat.completion`` / ``text_completion``), plus
  ``studio_model_version`` when the studio router answered, plus
  ``"studio_gateway": {"cache_hit": bool, "cost_usd": float, "model_group": str,
  "deployment": str, "latency_ms": float}``.
* Failures raise :class:`GatewayError` (a :class:`~studio.errors.StudioError`) with ``.status``
  (HTTP code; 0 when the gateway could not be reached), ``.body`` (the whole JSON error body) and a
  message naming the problem and the fix: unknown model group (404, lists the groups), rate/budget
  limit (429, ``.retry_after_s``), provider key missing (naming the env var), upstream failure
  after fallbacks (502/504).
* Retries: ``max_retries`` (default 2) retries a 429 after its Retry-After (at most 30 s) and a
  connection error or timeout with backoff (0.5 s, 1 s, ...); nothing else. The gateway has already
  fallen back across deployments and retried upstream, so its 5xx are final (it also marks them
  ``x-should-retry: false`` for any other ``openai`` client), and other 4xx are the caller's to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studio.errors import StudioError

if TYPE_CHECKING:
    import openai

__all__ = ["Client", "GatewayError", "gateway_url", "in_job", "preload_sdk", "resolve_api_key"]

_MAX_RETRY_AFTER_S = 30.0
# Connections per httpx pool. httpcore's pool walks all its connections (a socket poll each) when a
# request starts and when one ends, so a caller with 32 calls in flight spent ~3 ms of CPU per call
# in that walk, 3x a lone call's whole cost; a wide caller gets one small pool per 8 calls.
_POOL_WIDTH = 8


class GatewayError(StudioError):
    """A gateway call failed; ``status`` is the HTTP status (0: gateway unreachable)."""

    def __init__(self, problem: str, fix: str | None = None, *, status: int = 502,
                 retry_after_s: float | None = None, body: dict | None = None):
        super().__init__(problem, fix, status_code=status or 502)
        self.status = status
        self.retry_after_s = retry_after_s
        self.body = body or {}


def gateway_url() -> str:
    url = os.environ.get("STUDIO_GATEWAY_URL")
    if url:
        return url.rstrip("/")
    from studio.settings import StudioSettings

    return StudioSettings().base_url + "/gateway/v1"


def in_job() -> bool:
    """Whether this process runs a job: the scheduler sets STUDIO_JOB_ID in every job's
    environment, and Ray sets RAY_JOB_CONFIG_JSON_ENV_VAR for any Ray job's driver
    (``ray job submit`` included)."""
    return bool(os.environ.get("STUDIO_JOB_ID") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def resolve_api_key() -> str:
    if os.environ.get("STUDIO_API_KEY"):
        return os.environ["STUDIO_API_KEY"]
    if in_job():
        # The admin key may well be readable here (same node, same user): a job still never
        # spends on it.
        raise GatewayError(
            "this job has no studio key for the gateway (it never uses the admin key)",
            "queue it through the API or the CLI with your key (the scheduler then gives it a key "
            "derived from yours), or with `ray job submit` pass your own: --runtime-env-json "
            "'{\"env_vars\": {\"STUDIO_API_KEY\": \"sk-studio-...\"}}'", status=401)
    if os.environ.get("STUDIO_ADMIN_KEY"):
        return os.environ["STUDIO_ADMIN_KEY"]
    from studio.settings import StudioSettings

    path = StudioSettings().admin_key_file
    if path.exists():
        return path.read_text().strip()
    raise GatewayError(
        "no studio API key (STUDIO_API_KEY, STUDIO_ADMIN_KEY or the admin key file `studio up` writes)",
        f"set STUDIO_API_KEY (create one with `studio keys create`) or run `studio up`, which "
        f"writes {path}", status=401)


def _sdk():
    """The ``openai`` module, imported at the first call: the CLI and the API app import this
    module at start, and importing the SDK there added 0.9 s to `import studio.cli.main`."""
    import openai

    return openai


def preload_sdk() -> None:
    """Import the SDK now: a job calls this at its start, so the first call does not pay for it."""
    _sdk()


def _status_error(e: openai.APIStatusError) -> GatewayError:
    resp = e.response
    try:
        body = resp.json()
    except ValueError:
        body = {"error": {"message": resp.text[:500]}}
    # The SDK unwraps {"error": {...}} into e.body; FastAPI's own errors are {"detail": ...}.
    detail = e.body
    if isinstance(detail, dict):
        message = (detail.get("message") or detail.get("detail") or detail.get("title")
                   or str(detail))
    else:
        message = str(detail)[:500] if detail else e.message
    retry_after = resp.headers.get("retry-after")
    try:
        retry_after_s = float(retry_after) if retry_after else None
    except ValueError:  # an HTTP date: wait the default
        retry_after_s = None
    return GatewayError(f"gateway answered {resp.status_code}: {message}", status=resp.status_code,
                        retry_after_s=retry_after_s, body=body if isinstance(body, dict) else {})


@dataclass
class _LoopClients:
    """One event loop's SDK clients (each its own httpx pool), their calls in flight, and the
    caller's semaphore; a call goes to the least busy pool."""

    loop: asyncio.AbstractEventLoop
    sdks: list[openai.AsyncOpenAI]
    busy: list[int]
    sem: asyncio.Semaphore | None

    async def post(self, path: str, body: dict) -> object:
        i = min(range(len(self.sdks)), key=self.busy.__getitem__)
        self.busy[i] += 1
        try:
            return await self.sdks[i].post(path, cast_to=object, body=body)
        finally:
            self.busy[i] -= 1


class Client:
    """Synchronous and asynchronous calls to the gateway, tagged with the calling service and job."""

    def __init__(self, service: str, job_id: str | None = None, *, base_url: str | None = None,
                 api_key: str | None = None, timeout_s: float = 300.0, max_retries: int = 2,
                 max_concurrency: int | None = None):
        if not service:
            raise GatewayError("Client needs a service name", "pass service='eval' (or synth, "
                               "grpo, playground, ...) so usage is attributed", status=400)
        self.service = service
        self.job_id = job_id
        self.base_url = (base_url or gateway_url()).rstrip("/")
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self._sync: openai.OpenAI | None = None
        self._async: dict[int, _LoopClients] = {}
        self._async_lock = threading.Lock()
        self._sync_sem = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None

    def http_target(self) -> tuple[str, dict[str, str]]:
        """(base URL, headers) of this client's calls, for an OpenAI-compatible client the studio
        does not own (lm-evaluation-harness): its calls then carry this client's key and tags."""
        options = self._sdk_options()
        return self.base_url, {"Authorization": f"Bearer {options['api_key']}", **options["default_headers"]}

    # -- plumbing ---------------------------------------------------------------------------
    def _sdk_options(self) -> dict[str, Any]:
        if self._api_key is None:
            self._api_key = resolve_api_key()
        headers = {"x-studio-service": self.service}
        if self.job_id:
            headers["x-studio-job-id"] = str(self.job_id)
        if self.max_concurrency:
            headers["x-studio-job-concurrency"] = str(self.max_concurrency)
        # The SDK's own retries stay off (max_retries=0): it would also retry 408/409/5xx unless
        # every answer carried `x-should-retry: false` (a 5xx from Serve's proxy or an ingress
        # error does not), it waits a Retry-After of up to 120 s and none above, and it would hold
        # our concurrency slot while it waits. The few lines in _retry_delay keep the policy ours.
        return {"base_url": self.base_url, "api_key": self._api_key, "default_headers": headers,
                "timeout": self.timeout_s, "max_retries": 0}

    def _sync_client(self) -> openai.OpenAI:
        if self._sync is None:
            self._sync = _sdk().OpenAI(**self._sdk_options())
        return self._sync

    def _async_clients(self) -> _LoopClients:
        # AsyncOpenAI clients (and a semaphore) per event loop: httpx pools are bound to the loop
        # that created them. The entry holds its loop, so a loop's id is not reused while it is
        # kept; entries of closed loops are dropped (a caller may asyncio.run every batch).
        loop = asyncio.get_running_loop()
        with self._async_lock:
            entry = self._async.get(id(loop))
            if entry is None:
                self._async = {k: v for k, v in self._async.items() if not v.loop.is_closed()}
                width = self.max_concurrency or 1
                sdks = [_sdk().AsyncOpenAI(**self._sdk_options())
                        for _ in range(-(-width // _POOL_WIDTH))]
                sem = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None
                entry = self._async[id(loop)] = _LoopClients(loop, sdks, [0] * len(sdks), sem)
        return entry

    def _gateway_error(self, e: openai.APIStatusError | openai.APIConnectionError) -> GatewayError:
        if isinstance(e, _sdk().APIStatusError):
            return _status_error(e)
        cause = e.__cause__ or e  # the httpx error under the SDK's "Connection error."
        return GatewayError(f"gateway at {self.base_url} unreachable "
                            f"({type(cause).__name__}: {cause})",
                            "start the stack with `studio up` or set STUDIO_GATEWAY_URL", status=0)

    def _retry_delay(self, attempt: int, err: GatewayError) -> float | None:
        """Seconds to wait before retrying, or None when the error is final: only a 429 (after
        Retry-After) and an unreachable gateway are retried; the gateway's 5xx come after its own
        fallbacks and upstream retries."""
        if attempt >= self.max_retries:
            return None
        if err.status == 429:
            return min(err.retry_after_s or 1.0, _MAX_RETRY_AFTER_S)
        if err.status == 0:
            return 0.5 * 2**attempt
        return None

    def _json(self, out: object) -> dict:
        if isinstance(out, dict):
            return out
        raise GatewayError(f"{self.base_url} answered something other than a JSON object "
                           f"({str(out)[:200]!r})", "point base_url or STUDIO_GATEWAY_URL at "
                           "<studio>/gateway/v1")

    def _request(self, path: str, body: dict | None = None) -> dict:
        attempt = 0
        while True:
            try:
                with self._sync_sem or contextlib.nullcontext():
                    sdk = self._sync_client()
                    out = sdk.get(path, cast_to=object) if body is None else \
                        sdk.post(path, cast_to=object, body=body)
                return self._json(out)
            except (_sdk().APIStatusError, _sdk().APIConnectionError) as e:
                err = self._gateway_error(e)
                delay = self._retry_delay(attempt, err)
                if delay is None:
                    raise err from e
            time.sleep(delay)
            attempt += 1

    async def _arequest(self, path: str, body: dict) -> dict:
        lane = self._async_clients()
        attempt = 0
        while True:
            try:
                async with lane.sem or contextlib.nullcontext():
                    out = await lane.post(path, body)
                return self._json(out)
            except (_sdk().APIStatusError, _sdk().APIConnectionError) as e:
                err = self._gateway_error(e)
                delay = self._retry_delay(attempt, err)
                if delay is None:
                    raise err from e
            await asyncio.sleep(delay)
            attempt += 1

    # -- API -------------------------------------------------------------------------------
    def chat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> dict:
        return self._request("/chat/completions", {"model": model, "messages": messages, **params})

    async def achat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> dict:
        return await self._arequest("/chat/completions",
                                    {"model": model, "messages": messages, **params})

    def completions(self, model: str, prompt: str | list[str], **params: Any) -> dict:
        return self._request("/completions", {"model": model, "prompt": prompt, **params})

    async def acompletions(self, model: str, prompt: str | list[str], **params: Any) -> dict:
        return await self._arequest("/completions", {"model": model, "prompt": prompt, **params})

    def models(self) -> list[str]:
        return [m["id"] for m in self._request("/models").get("data", [])]

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
