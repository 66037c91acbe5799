"""Response cache keying: which requests are cacheable and what makes two of them "identical".

Only deterministic requests are cached — temperature 0 or an explicit seed — and never streams or
``n > 1``. The key is a SHA-256 of the endpoint, model group and every parameter that changes the
answer; parameters that only label the call (``user``, ``stream_options``) are left out, so the
same eval prompt from two jobs shares one entry.

Entries are per principal key (``scope``): a key and the jobs it submits (whose job keys act for
it) share them; no other key is ever answered from them. A cached answer shows what a prompt
produced, and a shared cache would let one key learn another's prompts by probing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Fields that do not change the model's answer.
_LABEL_FIELDS = {"user", "stream_options"}


def is_cacheable(body: dict[str, Any]) -> bool:
    if body.get("stream") or (body.get("n") or 1) > 1:
        return False
    temperature = body.get("temperature", 1.0)
    return temperature == 0 or body.get("seed") is not None


def cache_key(namespace: str, endpoint: str, body: dict[str, Any], scope: int | None = None
              ) -> str:
    material = {k: v for k, v in body.items() if k not in _LABEL_FIELDS}
    blob = json.dumps([scope, endpoint, material], sort_keys=True, separators=(",", ":"),
                      default=str)
    return f"{namespace}:cache:{hashlib.sha256(blob.encode()).hexdigest()}"
