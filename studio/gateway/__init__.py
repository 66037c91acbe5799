"""The LLM gateway: one place that knows cost, caches, routes, falls back and limits.

Studio code imports only :class:`Client`, :class:`GatewayError` and ``preload_sdk`` from here; the LiteLLM-based
server side (``studio.gateway.service``) runs inside the ``Gateway`` Serve deployment.
"""

import os

# LiteLLM fetches its price map from GitHub at import unless told to use the bundled copy; the
# studio runs offline and needs reproducible prices. Set before any gateway module imports litellm.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from studio.gateway.client import Client, GatewayError, preload_sdk  # noqa: E402

__all__ = ["Client", "GatewayError", "preload_sdk"]
