"""ApiIngress: the HTTP front door of the Serve application (``/healthz``, ``/api/*``, ``/metrics``).

The FastAPI app is built on the replica (a builder, not a pickled app), from ``STUDIO_*`` env vars
that ``build_app`` forwards, so the replica opens the same database and artifact store as the CLI.
"""

from __future__ import annotations

from ray import serve


def _build_api():
    from studio.api.app import create_app

    return create_app()


@serve.deployment(name="ApiIngress", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(_build_api)
class ApiIngress:
    pass
