from __future__ import annotations

from pathlib import Path

import typer

from studio.cli.common import console
from studio.models.tiny import TinyModelSpec, make_tiny
from studio.recipes import apply_overrides, load_recipe, validate_spec
from studio.settings import get_settings

app = typer.Typer(help="Models: build the tiny local model (registry commands arrive with training).",
                  no_args_is_help=True)


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
