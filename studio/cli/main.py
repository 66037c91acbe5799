"""``studio``: the command line. Commands are thin: they parse, call a library function, print."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from studio.cli import data, jobs, keys, models, train
from studio.cli import experiments, mlflow_sync
from studio.cli import eval as eval_cli
from studio.cli import usage
from studio.cli import backup as backup_cli
from studio.cli import batches as batches_cli
from studio.cli import loops as loops_cli
from studio.cli import serve as serve_cli
from studio.cli.common import console, err_console, settings_with_db
from studio.errors import StudioError

app = typer.Typer(
    name="studio",
    help="LLM Studio: own your models on Ray. Start with `studio up`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(keys.app, name="keys")
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="models")
app.add_typer(train.app, name="train")
app.add_typer(jobs.app, name="jobs")
app.add_typer(experiments.app, name="experiments")
app.add_typer(eval_cli.app, name="eval")
app.add_typer(serve_cli.app, name="serve")
app.add_typer(batches_cli.app, name="batches")
app.add_typer(loops_cli.app, name="loop")
models.app.command("mlflow-sync")(mlflow_sync.mlflow_sync)
app.command("usage")(usage.usage)
app.command("backup")(backup_cli.backup)
app.command("restore")(backup_cli.restore)


@app.command()
def up(
    config: Path | None = typer.Option(None, "--config", help="Serve config; default configs/serve/studio_api.yaml (no engine); configs/serve/studio.yaml also serves the tiny model."),
) -> None:
    """Start (or join, with RAY_ADDRESS) a local Ray head and deploy the studio on it, with the
    MLflow UI on the studio's tracking store (STUDIO_MLFLOW_PORT; STUDIO_MLFLOW_UI=0: not)."""
    from studio import mlflow_server, ray_connection, stack

    settings = settings_with_db()
    with console.status("starting Ray and deploying the studio (first start takes ~30 s) …"):
        head = stack.up(settings, config)
    key_file, created = stack.ensure_admin_key(settings)
    console.print(f"[green]studio is up[/] at {settings.base_url}  (health: {settings.base_url}/healthz)")
    if head:
        console.print(f"Ray dashboard: {head.dashboard_url}   Ray address: {head.address}")
        shell_env = " ".join(f"{k}={v}" for k, v in ray_connection.client_env(settings).items())
        console.print(f"for `ray job submit` / `ray status`: export {shell_env}", highlight=False)
    else:
        console.print(f"joined the Ray cluster at {os.environ.get('RAY_ADDRESS')}")
    ui = mlflow_server.wait_ready(settings)
    if ui.state not in ("off",):
        console.print(f"MLflow UI: {ui.url or '-'} ({ui.state}{': ' + ui.note if ui.note else ''})", highlight=False)
    if created and settings.admin_key:
        console.print("admin key: the one in STUDIO_ADMIN_KEY is registered")
    elif created:
        console.print(f"admin key written to {key_file} (shown only there; keep it secret)")
    else:
        console.print(f"admin key: already set up (see {key_file} or STUDIO_ADMIN_KEY)")
    from studio.serving.restore import pending

    if coming := pending(settings):
        console.print(f"restoring {len(coming)} runtime deployment(s) in the background: "
                      f"{', '.join(coming)} (`studio serve ls` shows their state; /v1 answers 503 "
                      "with Retry-After until each is back)")


@app.command()
def down() -> None:
    """Stop the studio application and the Ray head that `studio up` started."""
    from studio import stack

    settings = settings_with_db()
    if stack.down(settings):
        console.print("studio stopped")
    else:
        console.print("nothing to stop: no studio started from this STUDIO_HOME is running")


@app.command()
def status() -> None:
    """Where state lives, whether Ray and the studio are up; when up, the URLs, each service's
    state, the served models' states, and the versions of Ray, vLLM and torch."""
    from studio import mlflow_server, ray_connection, stack
    from studio.cli import stack_status
    from studio.ray_auth import ray_auth_token_source
    from studio.store.db import redacted_url

    settings = settings_with_db()
    address = ray_connection.ray_address(settings)
    health = stack.health(settings)
    console.print(f"STUDIO_HOME  {settings.home_abs}")
    console.print(f"database     {redacted_url(settings.db_url)}")
    console.print(f"artifacts    {settings.artifacts}")
    console.print(f"ray          {address or 'not running (studio up starts it)'}")
    if address:
        shell_env = " ".join(f"{k}={v}" for k, v in ray_connection.client_env(settings).items())
        console.print(f"ray shell    export {shell_env}", highlight=False)
    # Whoever reads the token controls the cluster: say where it is, never what it is.
    console.print(f"ray token    {ray_auth_token_source()}", highlight=False)
    console.print(f"studio       {settings.base_url} " + ("[green]up[/]" if health else "[red]down[/]"))
    if health:
        door = stack.front_door(settings)
        what = {"haproxy": "HAProxy (Ray Serve's high-throughput mode)"}.get(door or "", door)
        console.print(f"front door   {what or 'unknown'}")
        head = ray_connection.read_state(settings)
        for name, url in stack_status.urls(settings, head.dashboard_url if head else None):
            console.print(f"{name:<12} {url}", highlight=False)
        _print_services(settings, stack_status)
    ui = mlflow_server.status(settings)
    console.print(f"mlflow ui    {ui.url or '-'} {ui.state}" + (f" ({ui.note})" if ui.note else ""), highlight=False)
    console.print(f"versions     {stack_status.versions()}", highlight=False)
    if not health:
        raise typer.Exit(1)


def _print_services(settings, stack_status) -> None:
    from studio import ray_connection
    from studio.serving import status as serving_status

    try:
        ray_connection.connect(settings)
        applications = serving_status.serve_applications() or {}
    except Exception as e:  # noqa: BLE001 — the rest of the status is still worth printing
        console.print(f"services     cannot ask Serve ({type(e).__name__}: {e})", highlight=False)
        return
    console.print("services     (the studio application's deployments)")
    for name, state in stack_status.services(applications):
        console.print(f"  {name:<22} {state}", highlight=False)
    entries = serving_status.list_deployments(settings, applications=applications)
    console.print(f"models       {stack_status.models(entries)}", highlight=False)


@app.command()
def demo(exit_at_end: bool = typer.Option(False, "--exit", help="Stop the stack at the end."),
         profile: str = typer.Option("full", "--profile",
                                     help="full (make demo) or small (fewer rows and steps; the e2e test's)"),
         skip_loop: bool = typer.Option(False, "--skip-loop", help="Leave out the last step: one generation of "
                                        "the self-driving loop (configs/loops/reverse_tiny.yaml) with simulated "
                                        "users.")) -> None:
    """Run the studio's main loop on the tiny model: data → eval → SFT → hot-load → eval → promote →
    A/B + feedback → DPO → one generation of the self-driving loop (see docs/walkthrough.md)."""
    from studio.cli.demo import run_demo

    run_demo(exit_at_end=exit_at_end, profile=profile, skip_loop=skip_loop)


def main() -> None:
    try:
        app()
    except StudioError as e:
        err_console.print(f"[red]error:[/] {e.problem}", highlight=False)
        if e.fix:
            err_console.print(f"[yellow]fix:[/] {e.fix}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
