"""``studio experiments``: A/B experiments over served models (the database directly, like the
other groups; a running studio picks changes up within about a second)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from studio.cli.common import console, err_console, settings_with_db
from studio.store.db import session_scope

app = typer.Typer(help="A/B experiments: an alias split over models, feedback, preference export.",
                  no_args_is_help=True)


@app.command("create")
def create(
    alias: str = typer.Argument(..., help="The model name clients will request."),
    arms: list[str] = typer.Option(..., "--arm", help="MODEL=WEIGHT, repeat per arm: "
                                   "--arm tiny=0.5 --arm reverse-tiny@1=0.5"),
) -> None:
    """Create an active experiment: requests for ALIAS go to the arms by weight, sticky per user."""
    from studio.experiments.ab import ExperimentSpec, create_experiment, experiment_dict, parse_arm
    from studio.recipes import validate_spec

    spec = validate_spec(ExperimentSpec, {"alias": alias, "arms": [parse_arm(a).model_dump()
                                                                   for a in arms]}, "experiment")
    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        info = experiment_dict(create_experiment(s, spec, "cli"))
    _print_arms(info)
    unregistered = [a["model"] for a in info["arms"] if "@" not in a["model"]]
    if unregistered:
        err_console.print(f"note: {', '.join(unregistered)} must be registered names or served "
                          "base models; requests answer 404 naming the arm otherwise")


@app.command("ls")
def ls(status: str | None = typer.Option(None, "--status", help="active or stopped.")) -> None:
    """Experiments with their arms and status."""
    from studio.experiments.ab import experiment_dict, list_experiments

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        rows = [experiment_dict(e) for e in list_experiments(s, status)]
    table = Table("alias", "status", "arms", "created")
    for e in rows:
        table.add_row(e["alias"], e["status"],
                      ", ".join(f"{a['model']}={a['share']:.0%}" for a in e["arms"]),
                      e["created_at"][:19])
    console.print(table)


@app.command("show")
def show(alias: str = typer.Argument(..., help="Experiment alias."),
         as_json: bool = typer.Option(False, "--json", help="Print the JSON document.")) -> None:
    """Per arm: requests, p50 latency and TTFT, versions that answered, ratings, preferences."""
    from studio.experiments.ab import experiment_stats

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        info = experiment_stats(s, alias)
    if as_json:
        console.print_json(json.dumps(info))
        return
    console.print(f"[bold]{info['alias']}[/] · {info['status']} · {info['requests']} requests · "
                  f"{info['feedback']} feedback")
    table = Table("arm", "share", "requests", "versions", "p50 ms", "p50 TTFT ms", "ratings",
                  "mean", "+/-", "preferred")
    for a in info["arms"]:
        table.add_row(a["model"], f"{a['share']:.0%}", str(a["requests"]),
                      ", ".join(a["versions"]) or "-", _num(a["latency_ms_p50"]),
                      _num(a["ttft_ms_p50"]), str(a["ratings"]), _num(a["rating_mean"]),
                      f"{a['positive']}/{a['negative']}", f"{a['preferred']}/{a['not_preferred']}")
    console.print(table)


@app.command("stop")
def stop(alias: str = typer.Argument(..., help="Experiment alias.")) -> None:
    """Stop serving the alias; its completion log and feedback stay (export still works)."""
    from studio.experiments.ab import stop_experiment

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        stop_experiment(s, alias)
    console.print(f"experiment [bold]{alias}[/] stopped")


@app.command("export")
def export(alias: str = typer.Argument(..., help="Experiment alias."),
           name: str = typer.Option(..., "--name", help="Dataset name to store the rows under.")) -> None:
    """Feedback → preference rows (prompt, chosen, rejected) stored as dataset NAME, for DPO."""
    from studio.experiments.export import export_preferences

    settings = settings_with_db()
    info = export_preferences(settings, alias, name)
    console.print(f"[green]{info['ref']}[/] · preference · {info['rows']} rows "
                  f"({info['explicit']} explicit pairs, {info['from_ratings']} from ratings) · "
                  f"snapshot {info['snapshot_id'][:12]}")
    console.print(f"train on it: studio train submit configs/train/dpo_reverse_tiny.yaml "
                  f"data.dataset={info['name']}", highlight=False)


def _print_arms(info: dict) -> None:
    console.print(f"[green]experiment {info['alias']}[/] ({info['status']}): " + ", ".join(
        f"{a['model']} {a['share']:.0%}" for a in info["arms"]))


def _num(x) -> str:
    return "-" if x is None else f"{x:g}"
