"""`studio usage`: what the gateway's callers used and spent, as a table (or JSON)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import typer
from rich.table import Table

from studio.cli.common import console, settings_with_db
from studio.gateway.usage import aggregate_usage
from studio.store.db import session_scope


def usage(
    group_by: str = typer.Option("service,model", "--by", help="Comma-separated: service, model, "
                                 "key, day, job, deployment."),
    days: int | None = typer.Option(None, "--days", help="Only the last N days."),
    service: str | None = typer.Option(None, "--service", help="Only this calling service."),
    model: str | None = typer.Option(None, "--model", help="Only this model group."),
    key: str | None = typer.Option(None, "--key", help="Only this key name."),
    job: str | None = typer.Option(None, "--job", help="Only this job id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
) -> None:
    """Gateway usage: calls, tokens, cost, cache hits and errors per service/model/key/day."""
    settings = settings_with_db()
    dims = [g.strip() for g in group_by.split(",") if g.strip()]
    since = datetime.now(timezone.utc) - timedelta(days=days) if days else None
    with session_scope(settings.db_url) as s:
        rows = aggregate_usage(s, dims, since=since, service=service, model=model, key=key, job=job)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(*dims, "calls", "tokens in", "tokens out", "cost USD", "cache hits", "errors",
                  "mean ms", title="gateway usage")
    for r in rows:
        table.add_row(*[str(r[d] or "-") for d in dims], str(r["calls"]), str(r["prompt_tokens"]),
                      str(r["completion_tokens"]), f"{r['cost_usd']:.6f}", str(r["cache_hits"]),
                      str(r["errors"]), f"{r['mean_latency_ms']:.1f}")
    console.print(table if rows else "no gateway calls recorded yet")
