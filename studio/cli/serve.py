"""``studio serve``: deploy, list, evict and restart base models at runtime on the running studio
(deploy, ls and evict join its Ray cluster, like ``studio up``; restart calls the API's route, as
the UI does; the API offers them all at /api/deployments)."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import typer
from rich.table import Table

from studio.cli.common import console, settings_with_db

app = typer.Typer(help="Serving recipes: deploy, list, evict and restart base models at runtime.",
                  no_args_is_help=True)


@app.command("deploy")
def deploy(
    recipe: Path = typer.Argument(..., help="Serving recipe YAML, e.g. configs/serve/models/tiny2.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. "
                                          "deployment.num_replicas=2 name=tiny3"),
) -> None:
    """Deploy a base model next to the ones served; waits until it answers (or says why not)."""
    from studio import ray_connection
    from studio.recipes import load_recipe
    from studio.serving import lifecycle
    from studio.serving.recipe import ServingRecipe, resolve_model_path

    spec = resolve_model_path(load_recipe(recipe, ServingRecipe, overrides or []), Path.cwd())
    settings = settings_with_db()
    ray_connection.connect(settings)
    with console.status(f"deploying {spec.name} …") as status:
        row = lifecycle.deploy(settings, spec, f"cli:{getpass.getuser()}", progress=status.update)
    console.print(f"[green]{row['name']} is serving[/] (Serve application {row['app_name']}); "
                  f"request it as model={row['name']!r} on /v1")


@app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="Print the JSON document.")) -> None:
    """Served base models with their state — DEPLOYING, READY (>= 1 healthy replica), UNHEALTHY,
    RESTORING, EVICTING, EVICTED, FAILED (with the reason) — and live figures (when the studio
    runs)."""
    from studio import ray_connection
    from studio.serving import status

    settings = settings_with_db()
    try:
        ray_connection.connect(settings)
    except Exception:  # noqa: BLE001 — studio down: the rows alone
        pass
    entries = status.list_deployments(settings)
    if as_json:
        console.print_json(json.dumps(entries))
        return
    table = Table("name", "source", "state", "healthy replicas", "memory", "running", "waiting",
                  "tokens/s", "adapters", "message")
    for e in entries:
        t = e["totals"]
        mem = f"{t['memory_bytes'] / 2**30:.2f} GiB" if t["memory_bytes"] is not None else "-"
        rate = f"{t['tokens_per_s']:.1f}" if t["tokens_per_s"] is not None else "-"
        table.add_row(e["name"], e["source"], e["status"].upper(), str(e["healthy_replicas"]), mem,
                      _num(t["running_requests"]), _num(t["waiting_requests"]), rate,
                      ", ".join(t["adapters_loaded"]) or "-", e.get("message") or "")
    console.print(table)


def _num(value) -> str:
    return "-" if value is None else str(value)


@app.command("evict")
def evict(name: str = typer.Argument(..., help="The model name to stop serving.")) -> None:
    """Stop serving a runtime-deployed model; requests in flight finish, new ones get 404."""
    from studio import ray_connection
    from studio.errors import Conflict, StudioError
    from studio.serving import lifecycle

    settings = settings_with_db()
    try:
        lifecycle.check_evictable(settings, name)  # an A/B arm: refused before joining the cluster
    except Conflict as refused:
        # Without the cluster, a serve-config model on the same weights is unknown: the Router may
        # still serve those arms. On the cluster, evict() asks it and refuses again if not.
        try:
            ray_connection.connect(settings)
        except StudioError:
            raise refused from None
    ray_connection.connect(settings)
    with console.status(f"evicting {name} (requests in flight finish first) …"):
        lifecycle.evict(settings, name, "evicted with `studio serve evict`")
    console.print(f"{name} evicted: its name now answers 404 (not deployed)")


@app.command("restart")
def restart(name: str = typer.Argument(..., help="The runtime model to restart.")) -> None:
    """Restart a runtime model from its stored recipe (POST /api/deployments/NAME/restart, an
    admin key): a ready one answers 503 with Retry-After until it serves again; a failed or
    evicted one is deployed again. Waits until it serves (or says why not)."""
    import httpx

    from studio.errors import StudioError
    from studio.gateway.client import resolve_api_key
    from studio.serving.recipe import get_row
    from studio.serving.restore import RESTART_BOUND_S
    from studio.store.db import session_scope

    settings = settings_with_db()
    with session_scope(settings.db_url) as session:
        row = get_row(session, name)
        deploy_timeout_s = float((row.recipe or {}).get("deploy_timeout_s") or 600) if row else 600.0
    url = f"{settings.base_url}/api/deployments/{name}/restart"
    # The route answers within deploy_timeout_s + RESTART_BOUND_S (docs/serving.md).
    timeout = httpx.Timeout(deploy_timeout_s + RESTART_BOUND_S + 60, connect=10)
    with console.status(f"restarting {name} (it answers 503 with Retry-After until it is back) …"):
        try:
            r = httpx.post(url, headers={"Authorization": f"Bearer {resolve_api_key()}"}, timeout=timeout)
        except httpx.HTTPError as e:
            raise StudioError(f"the studio at {settings.base_url} did not answer ({e!r})",
                              "run `studio up` (or set STUDIO_HTTP_HOST/STUDIO_HTTP_PORT to the "
                              "running studio's)") from None
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code >= 400:
        problem = body.get("detail") if isinstance(body, dict) else None
        raise StudioError(f"restart of {name!r} refused ({r.status_code}): {problem or r.text[:500]}",
                          body.get("fix") if isinstance(body, dict) else None)
    message = f" ({body['message']})" if body.get("message") else ""
    console.print(f"{name}: {body.get('status')}{message}; request it as model={name!r} on /v1")
