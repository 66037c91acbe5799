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
* Transport: HTTP to ``$STUDIO_GATEWAY_URL`` if set, else ``settings.base_url + "/gateway/v1"``
  (the OpenAI-compatible surface of the Gateway deployment on the studio ingress).
* Auth: ``Authorization: Bearer <key>`` where the key is the ``api_key`` argument, else
  ``$STUDIO_API_KEY``, else ``$STUDIO_ADMIN_KEY``, else the admin key file ``$STUDIO_HOME/admin.key``
  written by ``studio up``. Inside a job (``$STUDIO_JOB_ID``, set by the scheduler, or a Ray job
  driver) only ``$STUDIO_API_KEY`` counts: a job spends on its submitter's key (the scheduler puts a
  key derived from it there), never on the admin key.
* Tags: ``x-studio-service`` (``service``) and ``x-studio-job-id`` (``job_id``) on every call; they
  end up in the usage table (``GET /api/usage``, ``studio usage``). ``max_concurrency`` (optional) is
  sent as ``x-studio-job-concurrency``: the gateway caps in-flight calls of that job across replicas;
  the client additionally caps itself with a semaphore so a batch caller does not queue 429s.
* Returns: the OpenAI JSON body as a dict (``chat.completion`` / ``text_completion``), plus
  ``studio_model_version`` when the studio router answered, plus
  ``"studio_gateway": {"cache_hit": bool, "cost_usd": float, "model_group": str,
  "deployment": str, "latency_ms": float}``.
* Failures raise :class:`GatewayError` (a :class:`~studio.errors.StudioError`) with ``.status``
  (HTTP code; 0 when the gateway could not be reached) and a message naming the problem and the
  fix: unknown model group (404, lists the groups), rate/budget limit (429, ``.retry_after_s``),
  provider key missing (naming the env var), upstream failure after fallbacks (502/504).
  ``max_retries`` (default 2) retries 429s after Retry-After and connection errors with backoff.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import httpx

from studio.errors import StudioError

__all__ = ["Client", "GatewayError", "gateway_url", "in_job", "resolve_api_key"]


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
        "no API key for the gateway",
        f"set STUDIO_API_KEY (create one with `studio keys create`) or run `studio up`, which "
        f"writes {path}", status=401)


def _error_from_response(resp: httpx.Response) -> GatewayError:
    try:
        body = resp.json()
    except ValueError:
        body = {"error": {"message": resp.text[:500]}}
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = err.get("message") or str(err)
    else:
        message = (body.get("detail") or body.get("title") or str(body)) if isinstance(body, dict) \
            else str(body)
    retry_after = resp.headers.get("retry-after")
    return GatewayError(f"gateway answered {resp.status_code}: {message}", status=resp.status_code,
                        retry_after_s=float(retry_after) if retry_after else None, body=body)


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
        self._sync: httpx.Client | None = None
        self._async: dict[int, tuple[httpx.AsyncClient, asyncio.Semaphore | None]] = {}
        self._sync_sem = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None

    # -- plumbing ---------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        if self._api_key is None:
            self._api_key = resolve_api_key()
        headers = {"Authorization": f"Bearer {self._api_key}", "x-studio-service": self.service}
        if self.job_id:
            headers["x-studio-job-id"] = str(self.job_id)
        if self.max_concurrency:
            headers["x-studio-job-concurrency"] = str(self.max_concurrency)
        return headers

    def _sync_client(self) -> httpx.Client:
        if self._sync is None:
            self._sync = httpx.Client(base_url=self.base_url, timeout=self.timeout_s)
        return self._sync

    def _async_client(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore | None]:
        # One AsyncClient per event loop: httpx pools are bound to the loop that created them.
        loop_id = id(asyncio.get_running_loop())
        if loop_id not in self._async:
            sem = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None
            self._async[loop_id] = (httpx.AsyncClient(base_url=self.base_url,
                                                      timeout=self.timeout_s), sem)
        return self._async[loop_id]

    def _retry_delay(self, attempt: int, err: GatewayError) -> float | None:
        """Seconds to wait before retrying, or None when the error is final."""
        if attempt >= self.max_retries:
            return None
        if err.status == 429:
            return min(err.retry_after_s or 1.0, 30.0)
        if err.status == 0:
            return 0.5 * 2**attempt
        return None

    def _request(self, method: str, path: str, json: dict | None = None) -> dict:
        attempt = 0
        while True:
            try:
                if self._sync_sem:
                    self._sync_sem.acquire()
                try:
                    resp = self._sync_client().request(method, path, json=json,
                                                       headers=self._headers())
                finally:
                    if self._sync_sem:
                        self._sync_sem.release()
                if resp.status_code < 400:
                    return resp.json()
                err = _error_from_response(resp)
            except httpx.TransportError as e:
                err = self._unreachable(e)
            delay = self._retry_delay(attempt, err)
            if delay is None:
                raise err
            time.sleep(delay)
            attempt += 1

    async def _arequest(self, method: str, path: str, json: dict | None = None) -> dict:
        client, sem = self._async_client()
        attempt = 0
        while True:
            try:
                if sem:
                    async with sem:
                        resp = await client.request(method, path, json=json,
                                                    headers=self._headers())
                else:
                    resp = await client.request(method, path, json=json, headers=self._headers())
                if resp.status_code < 400:
                    return resp.json()
                err = _error_from_response(resp)
            except httpx.TransportError as e:
                err = self._unreachable(e)
            delay = self._retry_delay(attempt, err)
            if delay is None:
                raise err
            await asyncio.sleep(delay)
            attempt += 1

    def _unreachable(self, e: Exception) -> GatewayError:
        return GatewayError(f"gateway at {self.base_url} unreachable ({type(e).__name__}: {e})",
                            "start the stack with `studio up` or set STUDIO_GATEWAY_URL", status=0)

    # -- API -------------------------------------------------------------------------------
    def chat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> dict:
        return self._request("POST", "/chat/completions",
                             {"model": model, "messages": messages, **params})

    async def achat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> dict:
        return await self._arequest("POST", "/chat/completions",
                                    {"model": model, "messages": messages, **params})

    def completions(self, model: str, prompt: str | list[str], **params: Any) -> dict:
        return self._request("POST", "/completions", {"model": model, "prompt": prompt, **params})

    async def acompletions(self, model: str, prompt: str | list[str], **params: Any) -> dict:
        return await self._arequest("POST", "/completions",
                                    {"model": model, "prompt": prompt, **params})

    def models(self) -> list[str]:
        return [m["id"] for m in self._request("GET", "/models").get("data", [])]

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
