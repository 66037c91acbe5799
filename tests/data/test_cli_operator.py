"""The operator's CLI runs in-process on its own machine (docs/security.md, Files): it reads and
writes any path the operator can, outside STUDIO_DATA_ROOTS, and records no owner key."""

from __future__ import annotations

import json

from studio.store.db import session_scope

ROWS = [{"prompt": f"reverse: {i}", "completion": str(i)[::-1]} for i in range(12)]


def test_the_cli_is_the_operator_in_process(settings, tmp_path, monkeypatch):
    """`studio data ingest` reads a file outside every data root (the operator's own file; the
    default roots are only $STUDIO_HOME and the artifact store) and records no owner key, and
    `studio data export` writes where the operator says."""
    from typer.testing import CliRunner

    from studio.cli.main import app as cli
    from studio.settings import get_settings

    data = tmp_path / "elsewhere" / "rows.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    for var, value in {"STUDIO_HOME": str(settings.home), "STUDIO_DATABASE_URL": settings.db_url,
                       "COLUMNS": "300"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("STUDIO_DATA_ROOTS", raising=False)
    monkeypatch.chdir(data.parent)
    get_settings.cache_clear()
    try:
        assert not get_settings().data_roots
        r = CliRunner().invoke(cli, ["data", "ingest", "rows.jsonl", "--name", "ops"])
        assert r.exit_code == 0 and "ops@1" in r.output, r.output
        r = CliRunner().invoke(cli, ["data", "export", "ops", str(tmp_path / "out" / "ops.jsonl")])
        assert r.exit_code == 0, r.output
    finally:
        get_settings.cache_clear()
    assert [json.loads(x) for x in (tmp_path / "out" / "ops.jsonl").read_text().splitlines()] == ROWS
    with session_scope(settings.db_url) as s:
        from studio.access import name_owner
        from studio.store.models import DatasetVersion

        assert s.query(DatasetVersion.owner_key_id).filter_by(name="ops").all() == [(None,)]
        assert name_owner(s, "dataset", "ops") is None
