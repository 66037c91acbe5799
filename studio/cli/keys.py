from __future__ import annotations

import typer
from rich.table import Table

from studio.cli.common import console, settings_with_db
from studio.keys import Role, create_key, list_keys, revoke_key
from studio.store.db import session_scope

app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)


@app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="Unique name of the key."),
    role: Role = typer.Option(Role.user, "--role", help="admin | user | service"),
    rpm: int | None = typer.Option(None, "--rpm", help="Gateway requests per minute (default: no limit)."),
    tpm: int | None = typer.Option(None, "--tpm", help="Gateway tokens per minute (default: no limit)."),
    budget_usd: float | None = typer.Option(None, "--budget-usd", help="Total gateway spend in USD."),
) -> None:
    """Create a key and print its secret. It is stored hashed and cannot be shown again."""
    from studio.gateway.limits import set_key_limits

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        secret, info = create_key(s, name, role)
        if rpm is not None or tpm is not None or budget_usd is not None:
            set_key_limits(s, name, rpm=rpm, tpm=tpm, budget_usd=budget_usd)
    console.print(f"created key [bold]{info.name}[/] (role {info.role}); store it now, it is not shown again:")
    print(secret)


@app.command("ls")
def ls(jobs: bool = typer.Option(False, "--jobs", help="Also the per-job keys the scheduler derives "
                                 "from their submitters' keys.")) -> None:
    """List keys (names, roles, prefixes; never secrets)."""
    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        keys = list_keys(s, job_keys=jobs)
    table = Table("name", "role", "prefix", "created", "last used", "revoked",
                  *(("job", "expires") if jobs else ()))
    for k in keys:
        table.add_row(k.name, k.role, k.prefix + "…", k.created_at[:19], (k.last_used_at or "")[:19],
                      "yes" if k.revoked else "",
                      *((str(k.job_id or ""), (k.expires_at or "")[:19]) if jobs else ()))
    console.print(table)


@app.command("revoke")
def revoke(name: str = typer.Argument(..., help="Name of the key.")) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        revoke_key(s, name)
    console.print(f"revoked key [bold]{name}[/]")


@app.command("limit")
def limit(
    name: str = typer.Argument(..., help="Name of the key."),
    rpm: int | None = typer.Option(None, "--rpm", help="Gateway requests per minute."),
    tpm: int | None = typer.Option(None, "--tpm", help="Gateway tokens per minute."),
    budget_usd: float | None = typer.Option(None, "--budget-usd", help="Total gateway spend in USD."),
    clear: bool = typer.Option(False, "--clear", help="Remove all limits first."),
) -> None:
    """Set a key's gateway limits (over a limit the gateway answers 429 with Retry-After)."""
    from studio.gateway.limits import set_key_limits

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        key = set_key_limits(s, name, rpm=rpm, tpm=tpm, budget_usd=budget_usd, clear=clear)
        shown = f"rpm {key.rpm_limit or '-'}, tpm {key.tpm_limit or '-'}, budget ${key.budget_usd or '-'}"
    console.print(f"key [bold]{name}[/]: {shown}")
