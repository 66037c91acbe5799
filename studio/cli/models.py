from __future__ import annotations

from pathlib import Path

import typer

from rich.table import Column, Table

from studio.cli.common import console, settings_with_db
from studio.errors import StudioError
from studio.models.tiny import TinyModelSpec, make_tiny
from studio.recipes import apply_overrides, load_recipe, validate_spec
from studio.registry.versions import STAGES
from studio.settings import expand_home, get_settings
from studio.store.db import session_scope

app = typer.Typer(help="Models: the registry (ls, show, promote), adapters leaving it (download, merge, push) and the tiny local model.", no_args_is_help=True)


@app.command("make-tiny")
def make_tiny_cmd(
    out: Path | None = typer.Option(None, "--out", help="Directory to write; default $STUDIO_HOME/models/tiny. "
                                    "A leading '${STUDIO_HOME}' (quoted) is the studio's home."),
    config: Path | None = typer.Option(None, "--config", help="YAML with TinyModelSpec fields."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. seed=1 hidden_size=256"),
) -> None:
    """Build a tiny Llama + BPE tokenizer offline, deterministically (for tests and the demo)."""
    overrides = overrides or []
    spec = (load_recipe(config, TinyModelSpec, overrides) if config
            else validate_spec(TinyModelSpec, apply_overrides({}, overrides), "tiny model overrides"))
    settings = get_settings()
    out = Path(expand_home(str(out), settings.home_abs, field="--out")) if out else settings.models_dir / "tiny"
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
    if info.get("init_adapter"):
        console.print(f"started from adapter {info['init_adapter']}", highlight=False)
    if info.get("loop_generation"):
        g = info["loop_generation"]
        console.print(f"candidate of loop {g['loop']} generation {g['number']} ({g['state']}; champion "
                      f"{g['champion']})", highlight=False)
    if info.get("sweep"):
        sweep = info["sweep"]
        console.print(f"best trial of sweep job {sweep['job_id']}: {sweep.get('params')}", highlight=False)
    if m["mlflow_run_id"]:
        console.print(f"mlflow run {m['mlflow_run_id']}")


def _scorer_option(value: str | None) -> dict | None:
    """``exact_match`` → {"type": "exact_match"}; a YAML/JSON mapping is taken as the scorer."""
    if value is None:
        return None
    import yaml

    parsed = yaml.safe_load(value)
    return parsed if isinstance(parsed, dict) else {"type": str(value)}


@app.command("promote")
def promote_cmd(
    ref: str = typer.Argument(..., help="A pinned version: name@N."),
    stage: str = typer.Option("champion", "--stage", help=f"One of {', '.join(STAGES)}."),
    force: bool = typer.Option(False, "--force", help="Promote even if the gate refuses (recorded as forced)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Gate on this golden dataset for this call "
                                       "(default: the name's gate, see `studio models gate`)."),
    scorer: str | None = typer.Option(None, "--scorer", help="Gate scorer: a type (exact_match) or a YAML mapping."),
    margin: float | None = typer.Option(None, "--margin", help="Required lead of the candidate's mean over the champion's."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="When the gate queues an eval, wait for it and decide."),
) -> None:
    """Set a version's stage; champion (what the bare name serves) archives the previous champion.
    With a promotion gate, the candidate must beat the champion on the golden dataset (an eval is
    run, or a finished one reused); a refusal exits 1 and is recorded, --force overrides it."""
    import getpass

    from studio.evals.gate import gated_promote

    settings = settings_with_db()
    by = f"cli:{getpass.getuser()}"
    override = {"dataset": dataset, "scorer": _scorer_option(scorer), "margin": margin}
    while True:
        with session_scope(settings.db_url) as s:
            o = gated_promote(s, ref, stage, force=force, by=by, override=override)
        if o.outcome != "evaluating":
            break
        console.print(f"gate: {o.reason}", highlight=False)
        if not wait:
            console.print(f"run `studio models promote {ref}` again when eval {o.eval_id} is done")
            return
        from studio.cli.eval import watch

        if watch(settings, o.eval_id) != 0:
            raise typer.Exit(1)
    if o.outcome == "refused":
        console.print(f"[red]{o.ref} was not promoted[/]: {o.reason}", highlight=False)
        console.print("improve the candidate, or pass --force (recorded)")
        raise typer.Exit(1)
    color = "yellow" if o.outcome == "forced" else "green"
    console.print(f"[{color}]{o.ref}[/] is now {stage} ({o.outcome}: {o.reason})", highlight=False)
    from studio.registry.mlflow_mirror import mirror_best_effort

    mirror_best_effort(settings, o.ref.partition("@")[0], lambda line: console.print(line, highlight=False))


@app.command("gate")
def gate_cmd(
    name: str = typer.Argument(..., help="A registered model name."),
    dataset: str | None = typer.Option(None, "--dataset", help="Golden dataset (name, name@N or snapshot id)."),
    scorer: str = typer.Option("exact_match", "--scorer", help="Scorer type or a YAML mapping (an EvalSpec scorer)."),
    margin: float = typer.Option(0.0, "--margin", help="Candidate mean minus champion mean must exceed this."),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate only the first N rows."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Longest answer generated in the gate's eval."),
) -> None:
    """Show the name's promotion gate; with --dataset, set it."""
    import json

    from studio.evals.gate import GateConfig, get_gate, promotion_history, set_gate

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        if dataset:
            set_gate(s, name, GateConfig(dataset, _scorer_option(scorer), margin, limit, {"max_tokens": max_tokens}))
        cfg = get_gate(s, name)
        history = promotion_history(s, name)
    if cfg is None:
        console.print(f"{name}: no promotion gate (promotions are not gated); set one with --dataset")
    else:
        console.print(f"{name}: gate {json.dumps(cfg.__dict__)}", highlight=False)
    for e in history[-10:]:
        console.print(f"  {e['at'][:19]} v{e['version']} → {e['to_stage']}: {e['outcome']} · {e['reason']}",
                      highlight=False)


@app.command("download")
def download_cmd(
    ref: str = typer.Argument(..., help="name (its champion, else newest) or name@N."),
    out: Path | None = typer.Option(None, "--out", help="File to write; default ./NAME-vN.tar.gz. Never overwritten."),
) -> None:
    """The version's PEFT adapter folder with its model card (base model, data snapshot, recipe,
    scores) as a .tar.gz — what GET /api/models/{ref}/download streams."""
    import os
    import uuid

    from studio.registry.export import adapter_archive

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        filename, chunks = adapter_archive(s, ref)
    out = (out or Path(filename)).expanduser().resolve()
    if out.exists():
        raise StudioError(f"{out} already exists; download never overwrites", "pass another --out FILE")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    console.print(f"[green]{out}[/] ({out.stat().st_size} bytes)", highlight=False)


@app.command("merge")
def merge_cmd(
    ref: str = typer.Argument(..., help="An adapter version: name (its champion, else newest) or name@N."),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the merged model. "
                             "Under $STUDIO_HOME/models/NAME it is a base model recipes name as NAME."),
) -> None:
    """Merge the adapter into its base model (PEFT merge_and_unload; a QLoRA adapter onto the
    dequantized 4-bit base): safetensors weights, the base's tokenizer and a model card, loadable
    by transformers and vLLM."""
    import tempfile

    from studio.registry.merge import merge_source, merge_to_dir

    settings = settings_with_db()
    out = Path(expand_home(str(out), settings.home_abs, field="--out"))
    with session_scope(settings.db_url) as s:
        src = merge_source(s, ref)
    with tempfile.TemporaryDirectory(prefix="studio-merge-") as cache, console.status(f"merging {src.ref} …"):
        path = merge_to_dir(src, out, cache)
    console.print(f"[green]{src.ref} merged[/] into {src.base_model} at {path}", highlight=False)


@app.command("push")
def push_cmd(
    ref: str = typer.Argument(..., help="name (its champion, else newest) or name@N."),
    uri: str = typer.Argument(..., help="Destination folder: a local path, s3://bucket/prefix, gs://…, any "
                              "writable fsspec URI (credentials from the environment). Must not exist."),
) -> None:
    """Copy the version's adapter folder and its model card to URI: written under a temporary
    name and moved into place, so a failure leaves nothing at URI."""
    from studio.registry.export import push_version

    settings = settings_with_db()
    with session_scope(settings.db_url) as s, console.status(f"pushing {ref} to {uri} …"):
        push_version(s, ref, uri)
    console.print(f"[green]{ref}[/] pushed to {uri}", highlight=False)
