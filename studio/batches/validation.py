"""Reading a batch input file, all of it, before any line runs.

Two levels:

* **The file** (``check_file``, at ``POST /v1/batches``): UTF-8, at least one non-blank line, at
  most ``STUDIO_BATCH_MAX_LINES`` lines, and at least one line that is a JSON object. Anything
  else makes the file unusable: a 400 naming the problem, and no batch.
* **Each line** (``read_plan``, in the batch job): a JSON object with a ``custom_id`` (a string,
  unique in the file, at most 512 characters), ``method`` ``POST``, ``url`` equal to the batch's
  endpoint and a ``body`` the endpoint accepts (``studio.gateway.request``, the same check as
  ``/v1``: a ``model``, only allowlisted fields, the caps; no ``stream``). A line that fails is a
  ``Refusal``: an entry in the error file, with a code and a message naming its line; the other
  lines run. A duplicate ``custom_id``: the first line with it runs, the later ones are refused.

Blank lines are skipped and not counted; line numbers in messages count every line from 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from studio.errors import StudioError
from studio.gateway.request import RequestCaps, parse_request

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
MAX_CUSTOM_ID_CHARS = 512


@dataclass(frozen=True)
class LineRequest:
    """A line that will run: ``line`` is its index among the non-blank lines (0-based)."""

    line: int
    custom_id: str
    body: dict[str, Any]  # the validated fields, as the gateway forwards them

    @property
    def model(self) -> str:
        return self.body["model"]


@dataclass(frozen=True)
class Refusal:
    """A line that will not run, and why (an error-file entry with ``error: {code, message}``)."""

    line: int
    custom_id: str | None
    code: str
    message: str


@dataclass
class Plan:
    requests: list[LineRequest] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.requests) + len(self.refused)


def check_endpoint(endpoint: str) -> str:
    if endpoint not in ENDPOINTS:
        raise StudioError(f"endpoint {endpoint!r} is not served in batches",
                          f"use one of {', '.join(ENDPOINTS)}")
    return ENDPOINTS[endpoint]


def _lines(data: bytes, what: str, max_lines: int) -> list[tuple[int, str]]:
    """(line number from 1, text) of every non-blank line, or a 400 for an unusable file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise StudioError(f"{what} is not UTF-8 text ({e.reason} at byte {e.start})",
                          "upload a JSONL file: one JSON request per line, UTF-8") from None
    # Count before splitting: a file far over the limit is refused without building its lines.
    if text.count("\n") > 2 * max_lines + 1000:
        raise StudioError(f"{what} holds more than {max_lines:,} lines, the most one batch may have",
                          "split it into several batches (or an admin raises STUDIO_BATCH_MAX_LINES)")
    lines = [(n, s) for n, s in enumerate(text.splitlines(), start=1) if s.strip()]
    if not lines:
        raise StudioError(f"{what} is empty: it holds no request",
                          "upload a JSONL file with one request per line")
    if len(lines) > max_lines:
        raise StudioError(f"{what} holds {len(lines):,} lines; one batch may have at most "
                          f"{max_lines:,}", "split it into several batches (or an admin raises "
                          "STUDIO_BATCH_MAX_LINES)")
    return lines


def check_file(data: bytes, what: str, max_lines: int) -> int:
    """The number of requests in a usable input file, or a 400 saying why it is not usable."""
    lines = _lines(data, what, max_lines)
    for _, text in lines:
        try:
            if isinstance(json.loads(text), dict):
                return len(lines)
        except ValueError:
            continue
    raise StudioError(f"{what} is not JSONL: none of its {len(lines):,} lines is a JSON object",
                      'write one request per line: {"custom_id": "r1", "method": "POST", "url": '
                      '"/v1/chat/completions", "body": {"model": ..., "messages": [...]}}')


def read_plan(data: bytes, endpoint: str, caps: RequestCaps, max_lines: int, what: str = "the input file"
              ) -> Plan:
    """Every line of a usable file: the requests to run and the lines refused."""
    kind = check_endpoint(endpoint)
    plan, seen = Plan(), {}
    for index, (number, text) in enumerate(_lines(data, what, max_lines)):
        try:
            plan.requests.append(_request(index, number, text, endpoint, kind, caps, seen))
        except _Refused as r:
            plan.refused.append(Refusal(index, r.custom_id, r.code, f"line {number}: {r.message}"))
    return plan


class _Refused(Exception):
    def __init__(self, code: str, message: str, custom_id: str | None = None):
        super().__init__(message)
        self.code, self.message, self.custom_id = code, message, custom_id


def _request(index: int, number: int, text: str, endpoint: str, kind: str, caps: RequestCaps,
             seen: dict[str, int]) -> LineRequest:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise _Refused("invalid_json", f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise _Refused("invalid_json", "not a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _Refused("missing_custom_id", "`custom_id` is missing or not a non-empty string")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise _Refused("invalid_custom_id",
                       f"`custom_id` has {len(custom_id)} characters, at most {MAX_CUSTOM_ID_CHARS}")
    if custom_id in seen:
        raise _Refused("duplicate_custom_id", f"custom_id {custom_id!r} is already used on line "
                       f"{seen[custom_id]}; each request needs its own", custom_id)
    seen[custom_id] = number
    extra = sorted(set(obj) - {"custom_id", "method", "url", "body"})
    if extra:
        raise _Refused("invalid_request", f"unknown field(s) {', '.join(extra)}; a line holds "
                       "custom_id, method, url and body", custom_id)
    if obj.get("method") != "POST":
        raise _Refused("invalid_method", f"`method` is {obj.get('method')!r}; it must be 'POST'",
                       custom_id)
    if obj.get("url") != endpoint:
        raise _Refused("invalid_url", f"`url` is {obj.get('url')!r} but this batch's endpoint is "
                       f"{endpoint!r}; every line must name it", custom_id)
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _Refused("invalid_body", "`body` is missing or not a JSON object", custom_id)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _Refused("missing_model", "`body.model` is missing: name a model /v1/models lists",
                       custom_id)
    if body.get("stream"):
        raise _Refused("invalid_request", "`body.stream` is true; batch answers are whole bodies: "
                       "drop it", custom_id)
    try:
        fields = parse_request(kind, body, caps).fields()
    except StudioError as e:
        raise _Refused("invalid_request", f"body: {e}", custom_id) from None
    return LineRequest(index, custom_id, fields)
