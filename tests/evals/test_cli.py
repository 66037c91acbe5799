"""`studio eval run --here --watch` (the live table while the run goes, in this process), `eval ls`
and `eval show --results` through the CLI, on SQLite and PostgreSQL, through the real gateway to the
scripted provider."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from studio.cli.main import app as cli
from studio.errors import StudioError
from studio.settings import get_settings


@pytest.fixture
def studio_cli(settings, gateway, monkeypatch):
    for var, value in {"STUDIO_HOME": str(settings.home), "STUDIO_DATABASE_URL": settings.db_url,
                       "COLUMNS": "200"}.items():
        monkeypatch.setenv(var, value)
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(cli, list(args))
    get_settings.cache_clear()


def test_eval_run_watch_ls_show(studio_cli, reverse_data, tmp_path):
    spec = tmp_path / "eval.yaml"
    spec.write_text(f"name: cli-run\ndataset: {reverse_data}\nmodels: [good, bad]\ngeneration: {{max_tokens: 16}}\n"
                    "concurrency: 2\nscorers:\n  - type: exact_match\n  - {type: judge, model: judge}\n")
    r = studio_cli("eval", "run", str(spec), "limit=5", "--here", "--watch")
    assert r.exit_code == 0, r.output
    assert "eval 1: good, bad on rev-test" in r.output
    assert "[SUCCEEDED]" in r.output and "rows 10/10" in r.output  # the live table's last state
    assert "exact_match" in r.output and "win rate" in r.output

    r = studio_cli("eval", "ls")
    assert r.exit_code == 0 and "cli-run" in r.output and "SUCCEEDED" in r.output and "10/10" in r.output

    r = studio_cli("eval", "show", "1", "--results", "10")
    assert r.exit_code == 0, r.output
    verdicts = [line for line in r.output.splitlines() if line.startswith("#")]  # per-datapoint verdicts
    assert len(verdicts) == 10 and all("judge=8.00" in v for v in verdicts)
    assert sum("good:" in v and "exact_match=1.00" in v for v in verdicts) == 5

    # refused before a run exists: an unknown model, named with what is served
    # (the CLI's main() prints a StudioError's problem and fix; CliRunner hands back the exception)
    r = studio_cli("eval", "run", str(spec), "models=[good,gpt-99]", "--here")
    assert isinstance(r.exception, StudioError) and "no model named 'gpt-99'" in str(r.exception)
    assert "good, judge" in r.exception.fix  # what is served
    r = studio_cli("eval", "show", "2")
    assert isinstance(r.exception, StudioError) and "eval 2 does not exist" in str(r.exception)
