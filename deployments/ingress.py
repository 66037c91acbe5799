"""ApiIngress: the HTTP front door of the Serve application (``/healthz``, ``/api/*``, ``/v1/*``,
``/metrics``).

The FastAPI app is built on the replica (``__serve_build_asgi_app__``, not a pickled app), from
``STUDIO_*`` env vars that ``build_app`` forwards, so the replica opens the same database and
artifact store as the CLI. The JobScheduler's handle comes in as an init argument: that makes the
scheduler part of the application, and lets ``/api/scheduler`` ask it how it is doing. The
Router's handle (when the config serves models) answers ``/v1/*``; the Gateway's handle answers
``/gateway/v1/*``.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle


@serve.deployment(name="ApiIngress", ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class ApiIngress:
    def __init__(self, scheduler: DeploymentHandle | None = None,
                 router: DeploymentHandle | None = None, gateway: DeploymentHandle | None = None):
        self._scheduler = scheduler
        self._router = router
        self._gateway = gateway

    def __serve_build_asgi_app__(self):
        from studio.api.app import create_app

        app = create_app()
        app.state.scheduler = self._scheduler
        app.state.router = self._router  # the Router: config models and runtime-deployed ones
        if self._router is not None:
            from deployments.router_client import RouterClient

            # The /v1 data path (one per app: it caches the model deployments' handles).
            app.state.router_client = RouterClient(self._router)
        app.state.gateway = self._gateway  # the LLM gateway (/gateway/v1/*); None when disabled
        return app
