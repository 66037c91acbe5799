"""`studio loop` in-process (Typer's runner, the real database): create the shipped loop on a
registry name with a champion, list, show, pause/resume/cancel, explain; and the errors a user gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.loops import repository as repo
from studio.loops.spec import LoopSpec
from studio.loops.states import Reason, State
from studio.loops.stats import ArmCounts, Look, decide
from studio.settings import get_settings
from tests.cli_invoke import invoke as invoke_cli
from tests.cli_invoke import runner
from studio.cli.main import app
from studio.store.db import session_scope
from studio.store.models import ModelVersion

REPO = Path(__file__).resolve().parents[2]
SHIPPED = str(REPO / "configs" / "loops" / "reverse_tiny.yaml")


@pytest.fixture
def cli(settings, monkeypatch):
    monkeypatch.chdir(REPO)  # the loop's train.recipe (configs/train/...) is relative to the checkout
    monkeypatch.setenv("STUDIO_HOME", str(settings.home))
    monkeypatch.setenv("STUDIO_DATABASE_URL", settings.db_url)
    get_settings.cache_clear()

    def invoke(*args: str) -> tuple[int, str]:
        return invoke_cli("loop", *args)

    yield invoke
    get_settings.cache_clear()


def _champion(settings, base_model: str | None = None) -> None:
    # The shipped recipe's base_model is ${STUDIO_HOME}/models/tiny: the tiny model of this home.
    base_model = base_model or str(settings.home_abs / "models" / "tiny")
    with session_scope(settings.db_url) as s:
        s.add(ModelVersion(name="reverse-tiny", version=1, base_model=base_model, method="sft", adapter_type="lora",
                           uri="file:///nowhere", stage="champion", metrics={}))


def test_create_needs_a_champion_of_the_recipes_base_model(cli, settings):
    code, out = cli("create", SHIPPED)
    assert code == 1 and "registry name 'reverse-tiny' has no champion" in out and "studio models promote" in out
    _champion(settings, base_model="/somewhere/else/qwen")
    code, out = cli("create", SHIPPED)
    assert code == 1 and f"is for base model {settings.home_abs}/models/tiny" in out


def test_bad_recipe_values_name_the_field_and_the_fix(cli, settings):
    _champion(settings)
    code, out = cli("create", SHIPPED, "decision.alpha=0", "canary.steps=[50,25]")
    assert code == 1
    assert "decision.alpha" in out and "strictly between 0 and 1" in out
    assert "canary.steps" in out and "25 follows 50" in out


def test_the_shipped_loop_is_created_listed_paused_resumed_cancelled_and_explained(cli, settings):
    _champion(settings)
    code, out = cli("create", SHIPPED)
    assert code == 0, out
    assert "loop reverse-tiny-loop on reverse-tiny" in out and "25 % → 50 %" in out
    code, out = cli("create", SHIPPED)
    assert code == 1 and "already a loop named 'reverse-tiny-loop'" in out
    code, out = cli("create", SHIPPED, "name=another-loop")
    assert code == 1 and "one loop per served name" in out
    code, out = cli("ls")
    assert "reverse-tiny-loop" in out and "active" in out
    code, out = cli("explain", "reverse-tiny-loop")
    assert code == 1 and "has no generation yet" in out

    with session_scope(settings.db_url) as s:  # a generation in its canary, with two stored looks
        loop = repo.get_loop(s, "reverse-tiny-loop")
        spec = LoopSpec.model_validate(loop.spec)
        gen = repo.start_generation(s, loop, repo.frozen_config(spec, loop.train), actor="scheduler")
        for frm, to, why in ((State.WATCHING, State.TRIGGERED, Reason.TRIGGER_MANUAL),
                             (State.TRIGGERED, State.SNAPSHOT, Reason.STEP_DONE),
                             (State.SNAPSHOT, State.TRAINING, Reason.STEP_DONE),
                             (State.TRAINING, State.GATE, Reason.STEP_DONE),
                             (State.GATE, State.CANARY, Reason.SHADOW_SKIPPED)):
            repo.move(s, gen.id, frm, to, why, actor="scheduler")
        for i in (1, 10):
            look = Look(at_s=60.0 * i, weight=0.1,
                        champion=ArmCounts(completions=90 * i, rated=90 * i, thumbs_up=45 * i,
                                           latency_p95_ms=90, tokens_per_answer=8),
                        candidate=ArmCounts(completions=10 * i, rated=10 * i, thumbs_up=2 * i, errors=i,
                                            latency_p95_ms=95, tokens_per_answer=8),
                        step_assigned_champion=90 * i, step_assigned_candidate=10 * i)
            repo.record_look(s, gen.id, look, decide(look, spec.decision))

    code, out = cli("pause", "reverse-tiny-loop", "--reason", "looking")
    assert code == 0 and "paused; generation 1 PAUSED" in out
    code, out = cli("resume", "reverse-tiny-loop")
    assert code == 0 and "active; generation 1 CANARY" in out
    code, out = cli("explain", "reverse-tiny-loop", "--json")
    assert code == 0 and '"all_agree": true' in out
    code, out = cli("explain", "reverse-tiny-loop")
    assert code == 0 and "every stored verdict recomputes the same" in out and "roll_back" in out
    code, out = cli("cancel", "reverse-tiny-loop")
    assert code == 0 and "cancelled; generation 1 ROLLING_BACK" in out
    code, out = cli("show", "reverse-tiny-loop", "-g", "1")
    assert code == 0 and "hold" in out and "resume" in out and "cancel" in out and "2 looks" in out
    code, out = cli("show", "reverse-tiny-loop")
    assert code == 0 and "cancelled" in out and "ROLLING_BACK" in out
    code, out = cli("show", "nope")
    assert code == 1 and "loop 'nope' does not exist" in out


def test_run_starts_a_generation_by_hand_and_follow_prints_its_timeline(cli, settings):
    _champion(settings)
    assert cli("create", SHIPPED)[0] == 0
    code, out = cli("run", "reverse-tiny-loop", "--reason", "try it")
    assert code == 0 and "generation 1 TRIGGERED" in out and "studio loop show reverse-tiny-loop -g 1" in out
    code, out = cli("run", "reverse-tiny-loop")
    assert code == 1 and "already has an active generation" in out
    # Nothing moves it here (no scheduler runs): following stops at the timeout, saying so.
    code, out = cli("show", "reverse-tiny-loop", "-g", "1", "--follow", "--timeout-s", "0.2")
    assert code == 2 and "TRIGGERED" in out and "run by hand by cli: try it" in out
    assert "still TRIGGERED after 0.2 s" in out
    assert cli("pause", "reverse-tiny-loop")[0] == 0  # held: following stops, saying what to do
    code, out = cli("show", "reverse-tiny-loop", "-g", "1", "--follow")
    assert code == 3 and "PAUSED (hold)" in out and "studio loop resume reverse-tiny-loop" in out
    assert cli("cancel", "reverse-tiny-loop")[0] == 0  # ends it: nothing held traffic
    code, out = cli("show", "reverse-tiny-loop", "-g", "1", "--follow")
    assert code == 0 and "CANCELLED" in out and "generation 1: CANCELLED" in out
    code, out = cli("run", "reverse-tiny-loop")
    assert code == 1 and "loop reverse-tiny-loop is cancelled" in out and "studio loop resume" in out


def test_models_show_names_the_loop_generation_that_trained_a_version(cli, settings):
    _champion(settings)
    assert cli("create", SHIPPED)[0] == 0
    with session_scope(settings.db_url) as s:
        s.add(ModelVersion(name="reverse-tiny", version=2, base_model=str(settings.home_abs / "models" / "tiny"),
                           method="dpo", adapter_type="lora", uri="file:///nowhere", stage="candidate", metrics={}))
        loop = repo.get_loop(s, "reverse-tiny-loop")
        gen = repo.start_generation(s, loop, repo.frozen_config(LoopSpec.model_validate(loop.spec), loop.train),
                                    actor="scheduler", champion="reverse-tiny@1")
        for frm, to, why in ((State.WATCHING, State.TRIGGERED, Reason.TRIGGER_MANUAL),
                             (State.TRIGGERED, State.SNAPSHOT, Reason.STEP_DONE),
                             (State.SNAPSHOT, State.TRAINING, Reason.STEP_DONE),
                             (State.TRAINING, State.GATE, Reason.STEP_DONE)):
            repo.move(s, gen.id, frm, to, why, actor="scheduler",
                      values={"candidate": "reverse-tiny@2"} if to is State.GATE else None)
    code, out = invoke_cli("models", "show", "reverse-tiny@2")
    assert code == 0 and "candidate of loop reverse-tiny-loop generation 1 (GATE; champion reverse-tiny@1)" in out, out
    code, out = invoke_cli("models", "show", "reverse-tiny@1")
    assert code == 0 and "candidate of loop" not in out


def test_delete_asks_first_is_refused_while_a_generation_runs_and_frees_the_name(cli, settings):
    _champion(settings)
    assert cli("create", SHIPPED)[0] == 0
    assert cli("run", "reverse-tiny-loop")[0] == 0  # generation 1 TRIGGERED
    code, out = cli("delete", "reverse-tiny-loop", "--yes")
    assert code == 1 and "generation 1 is TRIGGERED" in out and "studio loop cancel reverse-tiny-loop" in out
    assert cli("cancel", "reverse-tiny-loop")[0] == 0  # nothing held traffic: CANCELLED at once
    code, out = invoke_cli("loop", "delete", "reverse-tiny-loop")  # no --yes: asks; no answer aborts
    assert code == 1 and "delete loop reverse-tiny-loop on reverse-tiny with its 1 generations" in out
    assert "registered versions, training and eval jobs, dataset snapshots and feedback stay" in out
    assert cli("show", "reverse-tiny-loop")[0] == 0  # still there
    r = runner.invoke(app, ["loop", "delete", "reverse-tiny-loop"], input="y\n")
    assert r.exit_code == 0, r.output
    assert "deleted loop reverse-tiny-loop: 1 generations, 3 transitions, 0 looks" in r.output
    code, out = cli("show", "reverse-tiny-loop")
    assert code == 1 and "loop 'reverse-tiny-loop' does not exist" in out
    code, out = cli("delete", "reverse-tiny-loop", "--yes")
    assert code == 1 and "does not exist" in out and "studio loop ls" in out
    assert cli("create", SHIPPED)[0] == 0  # the name and the served name are free again
