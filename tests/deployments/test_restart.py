"""``studio.serving.restore.restart`` refusals, without Ray (the restart of a live model is the
API's route on a running studio; tests/ui/test_models_page.py reaches it through the page): an
unknown name is a 404 naming the fix, a row on its way somewhere (deploying, restoring, evicting)
a 409, and the row is left as it was."""

from __future__ import annotations

import pytest

from studio.errors import Conflict, NotFound
from studio.serving.recipe import DeploymentStatus, ServingRecipe, claim, get_row, set_status
from studio.serving.restore import restart
from studio.store.db import session_scope
from tests.jobs.inputs import make_model_dir


def test_restart_refuses_an_unknown_name_and_a_row_on_its_way(settings, tmp_path):
    with pytest.raises(NotFound) as unknown:
        restart(settings, "nope", "admin-1")
    assert "no model named 'nope' was deployed at runtime" in unknown.value.problem
    assert "GET /api/deployments" in unknown.value.fix
    recipe = ServingRecipe.model_validate({"name": "tiny2", "deployment": {
        "engine": {"model": str(make_model_dir(tmp_path / "model"))}}})
    with session_scope(settings.db_url) as s:
        claim(s, recipe, "admin-1")  # DEPLOYING
    for status in (DeploymentStatus.DEPLOYING, DeploymentStatus.RESTORING, DeploymentStatus.EVICTING):
        with session_scope(settings.db_url) as s:
            row = get_row(s, "tiny2")
            if row.status != status.value:
                set_status(row, status)
        with pytest.raises(Conflict) as busy:
            restart(settings, "tiny2", "admin-1")
        assert f"model 'tiny2' is {status.value}: it cannot restart now" in busy.value.problem
        assert "wait until it is ready, failed or evicted" in busy.value.fix
        with session_scope(settings.db_url) as s:
            assert get_row(s, "tiny2").status == status.value
