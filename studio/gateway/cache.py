"""Response cache keying: which requests are cacheable and what makes two of them "identical".

Only deterministic requests are cached — temperature 0 or an explicit seed — and never streams or
``n > 1``. The key is a SHA-256 of the endpoint, model group and every parameter that changes the
answer; parameters that only label the call (``user``, ``metadata``) are left out, so the same
eval prompt from two jobs shares one entry.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Fields that do not change the model's answer.
_LABEL_FIELDS = {"user", "metadata", "stream_options", "store", "service_tier"}


def is_cacheable(body: dict[str, Any]) -> bool:
    if body.get("stream") or (body.get("n") or 1) > 1:
        return False
    temperature = body.get("temperature", 1.0)
    return temperature == 0 or body.get("seed") is not None


def cache_key(namespace: str, endpoint: str, body: dict[str, Any]) -> str:
    material = {k: v for k, v in body.items() if k not in _LABEL_FIELDS}
    blob = json.dumps([endpoint, material], sort_keys=True, separators=(",", ":"), default=str)
    return f"{namespace}:cache:{hashlib.sha256(blob.encode()).hexdigest()}"
