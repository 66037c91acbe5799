"""LLM Studio: own your models on Ray — data, fine-tuning, serving, gateway, evaluation."""

import os as _os

__version__ = "0.1.0"

# The local Ray head runs with token auth, and a client must say so too (it then finds the token
# on disk). Ray fixes the mode when it is first imported, so it is set when `studio` is imported —
# before any `import ray` of a studio process. With RAY_ADDRESS (joining another cluster) the
# choice is yours. See docs/decisions.md.
if not _os.environ.get("RAY_ADDRESS"):
    _os.environ.setdefault("RAY_AUTH_MODE", "token")
