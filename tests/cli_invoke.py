"""The `studio` console script in-process (Typer's runner on the real app)."""

from __future__ import annotations

from typer.testing import CliRunner

from studio.cli.main import app
from studio.errors import StudioError

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    """(exit code, output) as the console script gives them: a StudioError is exit 1 with its
    problem and fix (studio.cli.main.main)."""
    r = runner.invoke(app, list(args))
    if isinstance(r.exception, StudioError):
        return 1, r.output + str(r.exception)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output
