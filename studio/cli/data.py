from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from studio.cli.common import console, settings_with_db
from studio.data.ingest import ingest_path
from studio.data.kinds import DatasetKind
from studio.data import curate as curation
from studio.data import tools
from studio.data.snapshots import dataset_versions, list_datasets, load_split, resolve_snapshot
from studio.errors import StudioError
from studio.store.db import session_scope

app = typer.Typer(help="Datasets: ingest files into versioned snapshots, list, inspect.", no_args_is_help=True)


def _parse_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        dst, sep, src = item.partition("=")
        if not sep or not dst or not src:
            raise StudioError(f"--map {item!r} is not COLUMN=SOURCE", "e.g. --map completion=answer")
        out[dst.strip()] = src.strip()
    return out


@app.command("ingest")
def ingest(
    file: str = typer.Argument(..., help="File, directory or fsspec URL: JSONL, JSON (array), CSV, "
                               "Parquet, a `save_to_disk` dataset, .txt/.md/.html/.pdf documents."),
    name: str = typer.Option(..., "--name", help="Dataset name; new content adds a version."),
    kind: DatasetKind | None = typer.Option(None, "--kind", help="Force the row kind instead of detecting it."),
    map_: list[str] = typer.Option([], "--map", help="Rename a column: --map completion=answer."),
    show_rejected: int = typer.Option(20, "--show-rejected", help="How many rejected rows to print."),
    ray: bool | None = typer.Option(None, "--ray/--no-ray", help="Read with Ray Data (default: "
                                    "for inputs over STUDIO_DATA_RAY_MIN_BYTES)."),
) -> None:
    """Validate every row, keep the good ones as an immutable snapshot, report the bad ones.
    Runs in this process as the operator: any file this user can read (STUDIO_DATA_ROOTS limits
    only paths named over HTTP)."""
    settings = settings_with_db()
    with console.status(f"ingesting {file} …"):
        report = ingest_path(file, name, settings, kind=kind, column_map=_parse_map(map_), use_ray=ray,
                             check_roots=False)
    verb = "created" if report.created else "unchanged (same content as"
    console.print(
        f"[green]{name}@{report.version}[/] {verb}{')' if not report.created else ''} "
        f"snapshot {report.snapshot_id[:12]} · {report.kind} · {report.row_count} rows kept · "
        f"{report.rejected_count} rejected"
    )
    for r in report.rejected[:show_rejected]:
        where = f"{r.file} " if r.file else ""
        console.print(f"  [yellow]{escape(where)}row {r.row}[/]: {escape(r.reason)}", highlight=False)
    if report.rejected_count > show_rejected:
        console.print(f"  … and {report.rejected_count - show_rejected} more")


@app.command("ls")
def ls() -> None:
    """List datasets with their newest version."""
    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        rows = list_datasets(s)
    table = Table("name", "version", "snapshot", "kind", "rows", "rejected", "created")
    for d in rows:
        table.add_row(d["name"], str(d["version"]), d["snapshot_id"][:12], d["kind"], str(d["rows"]),
                      str(d["rejected_rows"]), d["created_at"][:19])
    console.print(table)


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="name, name@N, or a snapshot id (prefix)."),
    rows: int = typer.Option(5, "--rows", help="Rows to print."),
    split: str = typer.Option("all", "--split", help="all | train | validation"),
    validation_ratio: float = typer.Option(0.1, "--validation-ratio", help="Share held out as validation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
    dropped: bool = typer.Option(False, "--dropped", help="List the dropped (or rejected) rows and "
                                 "their reasons instead."),
    limit: int = typer.Option(50, "--limit", help="Dropped rows to list."),
) -> None:
    """Versions, stats and sample rows of a dataset; with --split, that split's size and rows."""
    settings = settings_with_db()
    if dropped:
        out = tools.dropped_rows(settings, ref, limit=limit)
        console.print(f"snapshot [bold]{out['snapshot_id']}[/] · {out['total']} dropped rows")
        for r in out["rows"]:
            where = f"{r['file']} " if r.get("file") else ""
            step = f"[{r['step']}] " if r.get("step") else ""
            console.print(f"  [yellow]{escape(where)}row {r['row']}[/] {escape(step + r['reason'])}",
                          highlight=False)
            if r.get("data") is not None:
                console.print(f"    {escape(json.dumps(r['data'], ensure_ascii=False)[:300])}", highlight=False)
        return
    with session_scope(settings.db_url) as s:
        resolved = resolve_snapshot(s, ref)
        snap = resolved.snapshot
        versions = dataset_versions(s, resolved.name) if resolved.name else []
    console.print(f"snapshot [bold]{snap.id}[/] · {snap.kind} · {snap.row_count} rows · {snap.uri}")
    console.print("stats: " + json.dumps(snap.stats))
    if snap.transform:
        console.print(f"lineage: {snap.transform} of {snap.parent_id} · {snap.dropped_count} dropped · "
                      + json.dumps(snap.params), highlight=False)
    for v in versions:
        console.print(f"  {v['name']}@{v['version']}  {v['snapshot_id'][:12]}  {v['rows']} rows  "
                      f"{v['rejected_rows']} rejected  {v['created_at'][:19]}  {v['source']}")
    table = load_split(snap.uri, split, validation_ratio if split != "all" else 0.0, seed)
    console.print(f"split {split}: {table.num_rows} rows")
    for row in table.slice(0, rows).to_pylist():
        console.print(json.dumps(row, ensure_ascii=False), highlight=False)


def _print_json(obj: object) -> None:
    console.print_json(json.dumps(obj, ensure_ascii=False, default=str))


@app.command("curate")
def curate_cmd(
    source: str | None = typer.Argument(None, help="Snapshot to curate (overrides the recipe's source)."),
    recipe: Path | None = typer.Option(None, "--recipe", help="configs/data/curate-*.yaml."),
    name: str | None = typer.Option(None, "--name", help="Result name (default SOURCE-curated)."),
    like: str | None = typer.Option(None, "--like", help="Re-run the steps recorded on this curated snapshot."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: --set steps.0.near_threshold=0.9"),
) -> None:
    """Apply recorded curation steps: a new snapshot with lineage and every dropped row's reason."""
    settings = settings_with_db()
    if like:
        if not source:
            raise StudioError("--like needs a SOURCE snapshot", "studio data curate SOURCE --like SNAP")
        out = curation.rerun(like, source, settings, name)
    else:
        if recipe is None:
            raise StudioError("no curation steps given", "pass --recipe configs/data/curate-sft.yaml or --like SNAP")
        spec = curation.load_curate_spec(str(recipe), set_)
        spec = spec.model_copy(update={k: v for k, v in (("source", source), ("name", name)) if v})
        with console.status(f"curating {spec.source} …"):
            out = curation.curate(spec, settings)
    verb = "created" if out["created"] else "unchanged"
    console.print(f"[green]{out['name']}@{out['version']}[/] {verb} · snapshot {out['snapshot_id'][:12]} · "
                  f"{out['rows']} rows kept · {out['dropped']} dropped · {out['redactions']} redactions "
                  f"(see `studio data show {out['name']} --dropped`)")


@app.command("stats")
def stats_cmd(
    ref: str = typer.Argument(..., help="name, name@N or snapshot id."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="Model folder whose tokenizer counts tokens."),
    validation_ratio: float = typer.Option(0.1, "--validation-ratio", help="Share held out as validation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
) -> None:
    """Rows and tokens per split, and a histogram of row lengths."""
    settings = settings_with_db()
    out = tools.snapshot_stats(settings, ref, tokenizer=tokenizer, validation_ratio=validation_ratio, seed=seed)
    unit = out["unit"]
    console.print(f"snapshot {out['snapshot_id'][:12]} · {out['kind']} · {out['rows']} rows · {out[unit]} {unit}")
    for split, v in out["splits"].items():
        console.print(f"  {split:<10} {v['rows']:>8} rows {v[unit]:>10} {unit}")
    top = max((b["rows"] for b in out["histogram"]), default=1) or 1
    for b in out["histogram"]:
        console.print(f"  {b['from']:>6}-{b['to']:<6} {'#' * round(40 * b['rows'] / top):<40} {b['rows']}")


@app.command("sample")
def sample_cmd(ref: str = typer.Argument(..., help="name, name@N or snapshot id."),
               n: int = typer.Option(5, "-n", help="Rows to sample."),
               seed: int = typer.Option(0, "--seed", help="Seed of the sample.")) -> None:
    """A seeded random sample of rows."""
    for row in tools.sample_rows(settings_with_db(), ref, n, seed):
        console.print(json.dumps(row, ensure_ascii=False), highlight=False)


@app.command("diff")
def diff_cmd(a: str = typer.Argument(..., help="First snapshot."), b: str = typer.Argument(..., help="Second snapshot."),
             show: int = typer.Option(5, "--show", help="Example rows per side.")) -> None:
    """Rows only in A, only in B, and in both."""
    _print_json(tools.diff_snapshots(settings_with_db(), a, b, show))


@app.command("export")
def export_cmd(
    ref: str = typer.Argument(..., help="name, name@N or snapshot id."),
    dest: Path = typer.Argument(..., help="Output file (.jsonl/.parquet) or folder (hf)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl | parquet | hf (datasets.save_to_disk)."),
    split: str = typer.Option("all", "--split", help="all | train | validation"),
    validation_ratio: float = typer.Option(0.1, "--validation-ratio", help="Share held out as validation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
) -> None:
    """Write a snapshot (or one split) to JSONL, Parquet or a Hugging Face dataset folder, on this
    machine as the operator (over HTTP, GET /api/datasets/REF/export downloads it)."""
    out = tools.export_snapshot(settings_with_db(), ref, dest, fmt, split,
                                validation_ratio if split != "all" else 0.0, seed)
    console.print(f"wrote {out['rows']} rows of {out['snapshot_id'][:12]} to {out['path']} ({fmt})")


@app.command("split")
def split_cmd(ref: str = typer.Argument(..., help="name, name@N or snapshot id."),
              validation_ratio: float = typer.Option(0.1, "--validation-ratio", help="Share held out."),
              seed: int = typer.Option(0, "--seed", help="Seed of the split."),
              name: str | None = typer.Option(None, "--name", help="Base name (default: the dataset's).")) -> None:
    """Materialize NAME-train and NAME-validation snapshots by seed and ratio."""
    out = tools.split_snapshot(settings_with_db(), ref, validation_ratio, seed, name)
    for split, v in out.items():
        console.print(f"[green]{v['name']}@{v['version']}[/] {v['rows']} rows · snapshot {v['snapshot_id'][:12]}")


@app.command("generate")
def generate_cmd(
    recipe: Path = typer.Option(..., "--recipe", help="configs/data/synth-*.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: --set model=tiny"),
    follow: bool = typer.Option(False, "--follow", help="Show progress until the job ends."),
    local: bool = typer.Option(False, "--local", help="Run in this process instead of as a Ray job."),
    max_retries: int = typer.Option(2, "--max-retries", help="Job retries; each resumes finished chunks."),
) -> None:
    """Generate QA / chain-of-thought / summary data from documents through the gateway."""
    import threading

    from studio.data import synth
    from studio.data.synth.run import run_job
    from studio.data.synth.spec import SynthSpec
    from studio.recipes import load_recipe

    settings = settings_with_db()
    spec = load_recipe(recipe, SynthSpec, set_)
    job_id = synth.submit(spec, settings, "cli", max_retries=max_retries, local=local)
    console.print(f"synthesis job [bold]{job_id}[/] {'running here' if local else 'queued'} · "
                  f"{spec.mode} by {spec.model} from {spec.source} → {spec.name}")
    failure: list[BaseException] = []
    if local:
        def work() -> None:
            try:
                run_job(job_id, settings)
            except BaseException as e:  # noqa: BLE001 — reported below; the job row has it too
                failure.append(e)
        threading.Thread(target=work, daemon=True).start()
    if not (follow or local):
        console.print(f"follow it: studio data generate … --follow, or GET /api/synth/{job_id}/events")
        return
    _follow_synth(settings, job_id)


def _follow_synth(settings, job_id: int) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from studio.data import synth

    info = synth.status(settings, job_id)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("queued", total=info.progress.chunks_total or None, detail="")
        for info in synth.follow(settings, job_id):
            p = info.progress  # text: "chunks 15/20 · 63 rows · 1.2 chunks/s · ETA 4s"
            bar.update(task, completed=p.chunks_done, total=p.chunks_total or None,
                       description=info.status.lower(),
                       detail=f"{p.text} · {p.parse_failures} unparsed · {p.tokens} tokens · ${p.cost_usd:.4f}")
    if info.status == "SUCCEEDED":
        r = info.result
        console.print(f"[green]{r.name}@{r.version}[/] snapshot {(r.snapshot_id or '')[:12]} · {r.rows} rows · "
                      f"{r.dropped} dropped (see `studio data show {r.name} --dropped`)")
    else:
        console.print(f"[red]job {job_id} {info.status}[/]: {info.error or ''}", highlight=False)
        raise typer.Exit(1)


@app.command("from-eval")
def from_eval_cmd(eval_id: int = typer.Argument(..., help="Evaluation job id with a pairwise judge."),
                  name: str = typer.Option(..., "--name", help="Name of the preference dataset."),
                  scorer: str | None = typer.Option(None, "--scorer", help="Pairwise judge scorer (default: the first).")) -> None:
    """Preference rows (prompt, chosen, rejected) from an evaluation's pairwise judge verdicts."""
    from studio.evals.preference import preference_from_eval

    out = preference_from_eval(settings_with_db(), eval_id, name, scorer)
    console.print(f"[green]{name}@{out['version']}[/] snapshot {out['snapshot_id'][:12]} · {out['rows']} pairs · "
                  f"{out['dropped']} ties/failures dropped")
