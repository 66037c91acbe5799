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
) -> None:
    """Create a key and print its secret. It is stored hashed and cannot be shown again."""
    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        secret, info = create_key(s, name, role)
    console.print(f"created key [bold]{info.name}[/] (role {info.role}); store it now, it is not shown again:")
    print(secret)


@app.command("ls")
def ls() -> None:
    """List keys (names, roles, prefixes; never secrets)."""
    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        keys = list_keys(s)
    table = Table("name", "role", "prefix", "created", "last used", "revoked")
    for k in keys:
        table.add_row(k.name, k.role, k.prefix + "…", k.created_at[:19], (k.last_used_at or "")[:19],
                      "yes" if k.revoked else "")
    console.print(table)


@app.command("revoke")
def revoke(name: str = typer.Argument(..., help="Name of the key.")) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        revoke_key(s, name)
    console.print(f"revoked key [bold]{name}[/]")
