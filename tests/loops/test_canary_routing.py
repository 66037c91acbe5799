"""The canary's split is an experiment aliased by the served name itself (SQLite and PostgreSQL):
only the loop may create one (an API caller's alias may not hide a registry name), its arms are set
absolutely (a repeat changes nothing), and it is deleted when the canary ends, so the bare name is
its champion's again. (The Router resolves an experiment alias before a registry name,
``deployments/router.py`` ``resolve``; a live check belongs to the loop's slow e2e tests.)"""

from __future__ import annotations

import pytest

from studio.errors import Conflict, NotFound
from studio.experiments.ab import ArmSpec, ExperimentSpec, create_experiment, get_experiment, list_experiments
from studio.loops.actions import ServiceActions
from studio.store.db import session_scope
from tests.loops.traffic import register

ACTIONS = ServiceActions(models_available=lambda: ["svc"], cluster_gpus=lambda: None)


def test_the_loop_splits_the_bare_name_absolutely_and_removes_the_split_at_the_end(settings):
    register(settings.db_url)  # svc@1 the champion, svc@2 the candidate
    with session_scope(settings.db_url) as s:
        assert ACTIONS.set_split(s, "svc", {"svc@1": 80.0, "svc@2": 20.0})
        assert not ACTIONS.set_split(s, "svc", {"svc@1": 80.0, "svc@2": 20.0})  # a repeat: no change
        assert ACTIONS.set_split(s, "svc", {"svc@1": 50.0, "svc@2": 50.0})
    with session_scope(settings.db_url) as s:
        exp = get_experiment(s, "svc")
        assert (exp.status, exp.created_by, exp.arms) == ("active", "loop", [
            {"model": "svc@1", "weight": 50.0}, {"model": "svc@2", "weight": 50.0}])
        assert ACTIONS.end_split(s, "svc") and not ACTIONS.end_split(s, "svc")
    with session_scope(settings.db_url) as s:
        with pytest.raises(NotFound):
            get_experiment(s, "svc")
        assert list_experiments(s) == []


def test_an_api_caller_may_not_alias_a_registry_name(settings):
    register(settings.db_url)
    with session_scope(settings.db_url) as s, pytest.raises(Conflict) as e:
        create_experiment(s, ExperimentSpec(alias="svc", arms=[ArmSpec(model="svc@1", weight=1),
                                                               ArmSpec(model="svc@2", weight=1)]))
    assert "the alias would hide it" in e.value.problem
