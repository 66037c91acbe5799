from __future__ import annotations

from pathlib import Path

import typer

from rich.table import Column, Table

from studio.cli.common import console, settings_with_db
from studio.models.tiny import TinyModelSpec, make_tiny
from studio.recipes import apply_overrides, load_recipe, validate_spec
from studio.registry.versions import STAGES
from studio.settings import get_settings
from studio.store.db import session_scope

app = typer.Typer(help="Models: the registry (ls, show, promote) and the tiny local model.", no_args_is_help=True)


@app.command("make-tiny")
def make_tiny_cmd(
    out: Path | None = typer.Option(None, "--out", help="Directory to write; default $STUDIO_HOME/models/tiny."),
    config: Path | None = typer.Option(None, "--config", help="YAML with TinyModelSpec fields."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. seed=1 hidden_size=256"),
) -> None:
    """Build a tiny Llama + BPE tokenizer offline, deterministically (for tests and the demo)."""
    overrides = overrides or []
    spec = (load_recipe(config, TinyModelSpec, overrides) if config
            else validate_spec(TinyModelSpec, apply_overrides({}, overrides), "tiny model overrides"))
    out = out or get_settings().models_dir / "tiny"
    with console.status("training the tokenizer and building the model …"):
        path = make_tiny(out, spec)
    console.print(f"[green]tiny model ready[/] at {path}  (hidden {spec.hidden_size}, "
                  f"{spec.num_hidden_layers} layers, vocab {spec.vocab_size}, seed {spec.seed})")


@app.command("ls")
def ls(name: str | None = typer.Argument(None, help="A registered name: list its versions.")) -> None:
    """Registered models (newest and champion version); with NAME, every version of it."""
    from studio.registry.versions import list_versions, model_summaries, version_dict

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        if name is None:
            rows = model_summaries(s)
        else:
            rows = [version_dict(v) for v in list_versions(s, name)]
    if name is None:
        table = Table(Column("name", min_width=max((len(m["name"]) for m in rows), default=4)),
                      "versions", "latest", "champion", "method", "base model", "updated")
        for m in rows:
            table.add_row(m["name"], str(m["versions"]), str(m["latest_version"]),
                          str(m["champion_version"] or "-"), m["method"], m["base_model"], m["updated_at"][:19])
    else:
        # Identifying columns keep their width in a narrow terminal; the others shrink.
        table = Table(Column("ref", min_width=max((len(v["ref"]) for v in rows), default=3)),
                      Column("stage", min_width=9), "method", "dataset", "job", "metrics", "created")
        for v in rows:
            table.add_row(v["ref"], v["stage"], f"{v['method']}/{v['adapter_type']}",
                          (v["dataset_snapshot_id"] or "-")[:8], str(v["job_id"] or "-"),
                          ", ".join(f"{k}={x:.4g}" if isinstance(x, float) else f"{k}={x}"
                                    for k, x in v["metrics"].items()), v["created_at"][:16])
    console.print(table)


@app.command("show")
def show(ref: str = typer.Argument(..., help="name (its champion, else newest) or name@N.")) -> None:
    """A model version and its lineage: the dataset snapshot and the job that produced it."""
    import json

    from studio.registry.versions import lineage

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        info = lineage(s, ref)
    m, job, data = info["model"], info["job"], info["dataset"]
    console.print(f"[bold]{m['ref']}[/] · {m['stage']} · {m['method']}/{m['adapter_type']} · base {m['base_model']}")
    console.print(f"uri {m['uri']}", highlight=False)
    console.print("metrics " + json.dumps(m["metrics"]), highlight=False)
    if data:
        console.print(f"dataset snapshot {data['snapshot_id'][:12]} · {data['kind']} · {data['rows']} rows")
    if job:
        console.print(f"job {job['id']} · {job['status']} · {job['attempts']} attempt(s) · by {job['submitted_by']}")
    if m["mlflow_run_id"]:
        console.print(f"mlflow run {m['mlflow_run_id']}")


@app.command("promote")
def promote_cmd(
    ref: str = typer.Argument(..., help="A pinned version: name@N."),
    stage: str = typer.Option("champion", "--stage", help=f"One of {', '.join(STAGES)}."),
) -> None:
    """Set a version's stage; champion (what the bare name serves) archives the previous champion."""
    from studio.registry.versions import promote

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        mv = promote(s, ref, stage)
        out = f"{mv.name}@{mv.version}"
    console.print(f"[green]{out}[/] is now {stage}")
