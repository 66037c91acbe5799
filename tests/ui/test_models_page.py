"""The models page's deployments, a name's promotion gate, usage over time and the MLflow links, in
a real browser against the studio API under uvicorn on a real database (no Ray, so no engine: a
deploy, restart or evict that gets past its checks is the API's 503 "run `studio up`" in words; a
real deploy through the form is in tests/ui/test_stack_walk.py, on the shared tiny stack).

Seeded through the service layer: runtime deployment rows (``tiny2`` ready and serving an arm of the
active experiment ``ab-ui``, ``broken`` failed with why); ``rev`` (user-1's) with a champion, a
candidate whose stored parity record is ok and that a stored eval finds worse than the champion,
and one whose parity record is a mismatch; gateway usage rows of two models over three days."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from studio.data.ingest import ingest_file
from studio.data.snapshots import resolve_snapshot
from studio.evals.queue import KIND
from studio.experiments.ab import ExperimentSpec, create_experiment
from studio.jobs.status import create_job
from studio.registry.versions import promote, register_version
from studio.serving.recipe import DeploymentStatus, ServingRecipe, claim, get_row, resolve_model_path, set_status
from studio.store.db import session_scope
from studio.store.models import EvalScore, UsageRecord
from tests.jobs.inputs import make_model_dir
from tests.ui.browser import api_server, chromium_page, screenshot_dir, ui_home

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]  # no Ray: a uvicorn and a browser
MLFLOW_UI = "http://mlflow.test:5000"
PARITY_OK = {"status": "ok", "compare": "text", "prompts": 4, "max_tokens": 16, "first_mismatch": None,
             "source": "gate dataset digits", "checked_at": "2026-12-06T00:00:00+00:00"}
PARITY_BAD = {**PARITY_OK, "status": "mismatch", "first_mismatch": {
    "index": 0, "prompt": "reverse: 12", "peft": "21", "served": "12"}}


def _recipe(model: str, name: str) -> ServingRecipe:
    return resolve_model_path(ServingRecipe.model_validate({"name": name, "deployment": {
        "engine": {"model": model, "kv_cache_space_gib": 1}, "num_cpus": 0.5}}))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ui = ui_home(tmp_path_factory, "ui-models-home")
    home, settings, user_1 = ui.home, ui.settings, ui.key_ids["user-1"]
    base = make_model_dir(home / "models" / "base-model")
    digits = home / "digits.jsonl"
    digits.write_text("".join(json.dumps({"prompt": f"reverse: {i}", "completion": str(i)[::-1]}) + "\n"
                              for i in range(10, 20)))
    ingest_file(digits, "digits", settings)
    now = datetime.now(UTC)
    with session_scope(settings.db_url) as s:
        set_status(claim(s, _recipe(str(base), "tiny2"), "admin-1"), DeploymentStatus.READY)
        set_status(claim(s, _recipe(str(base), "broken"), "admin-1"), DeploymentStatus.FAILED,
                   "model 'broken' failed to start: the engine ran out of memory")
        create_experiment(s, ExperimentSpec(alias="ab-ui", arms=[{"model": "tiny2", "weight": 1},
                                                                 {"model": "tiny", "weight": 1}]))
        common = {"name": "rev", "base_model": str(base), "method": "sft", "adapter_type": "lora",
                  "owner_key_id": user_1}
        register_version(s, uri="/a/rev-1", mlflow_run_id="run1abc", **common)
        register_version(s, uri="/a/rev-2", parity=PARITY_OK, **common)
        register_version(s, uri="/a/rev-3", parity=PARITY_BAD, **common)
        promote(s, "rev@1", "champion")
        # The stored eval the gate reuses: rev@2 answers 2 of 10 right, the champion 6 of 10.
        snapshot = resolve_snapshot(s, "digits").snapshot.id
        ev = create_job(s, name="gate rev@2 vs rev@1", kind=KIND, max_retries=0, submitted_by="seed", spec={
            "dataset": "digits", "models": ["rev@2", "rev@1"], "scorers": [{"type": "exact_match"}]})
        ev.status, ev.result = "SUCCEEDED", {"snapshot_id": snapshot, "rows": 10, "total": 20}
        s.add_all([EvalScore(job_id=ev.id, datapoint=i, model=m, scorer="exact_match", score=float(i < right))
                    for m, right in (("rev@2", 2), ("rev@1", 6)) for i in range(10)])
        # Gateway calls over three days: tiny on each, other on the last two (user-1's and admin-1's).
        s.add_all([UsageRecord(at=now - timedelta(days=d), key_name=key, service="playground", endpoint="chat",
                               model_group=model, prompt_tokens=10 * (d + 1), completion_tokens=5, cost_usd=0.001,
                               latency_ms=20.0)
                   for d, model, key in ((2, "tiny", "user-1"), (1, "tiny", "user-1"), (0, "tiny", "admin-1"),
                                         (1, "other", "admin-1"), (0, "other", "admin-1"))])
        eval_id = ev.id
    with api_server(home, env={"STUDIO_MLFLOW_UI_URL": MLFLOW_UI}) as url:
        yield {"base": url, "keys": ui.keys, "settings": settings,
               "eval_id": eval_id}


def _requests(page, method: str, fragment: str) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if r.method == method and fragment in r.url else None)
    return seen


def test_deployments_live_state_evict_refused_for_an_ab_arm_restart_and_the_deploy_form(server):
    with chromium_page(server["base"], screenshot_dir()) as b:
        b.login(server["keys"]["user-1"])  # a user reads the deployments, changes none
        b.goto("#/models")
        b.wait("#deployments tr[data-name='broken']")
        assert b.page.locator("#deploy-box, button.evict, button.restart").count() == 0
        assert "only an admin can deploy, evict or restart" in b.page.inner_text("#deploy-admin-note")
        b.page.click("#logout")

        b.login(server["keys"]["admin-1"])
        b.goto("#/models")
        b.wait("#deployments tr[data-name='tiny2'] button.evict")
        failed = b.page.inner_text("#deployments tr[data-name='broken']")
        assert "FAILED" in failed and "the engine ran out of memory" in failed, failed
        # No Serve here: a ready row is reported unhealthy, with why.
        assert "UNHEALTHY" in b.page.inner_text("#deployments tr[data-name='tiny2']")

        with b.expect_status(409):  # serving an arm of ab-ui: refused, naming it; nothing evicted
            b.page.click("#deployments tr[data-name='tiny2'] button.evict")
            b.wait("#banner:has-text('serves an arm of active experiment')")
        assert "'ab-ui' (arm 'tiny2')" in b.banner() and "studio experiments stop ab-ui" in b.banner()
        with session_scope(server["settings"].db_url) as s:
            assert get_row(s, "tiny2").status == "ready"
        b.shot("models-20-evict-refused")

        with b.expect_status(503):  # restart gets past the admin check; the engine needs `studio up`
            b.page.click("#deployments tr[data-name='tiny2'] button.restart")
            b.wait("#banner:has-text('studio up')")

        # Live state: the row changes on the server, the page follows without a reload.
        with session_scope(server["settings"].db_url) as s:
            set_status(get_row(s, "broken"), DeploymentStatus.EVICTED, "evicted by the operator")
        b.wait("#deployments tr[data-name='broken'] .badge:text-is('EVICTED')", timeout_s=15)
        assert b.page.locator("#deployments tr[data-name='broken'] button.evict").count() == 0
        assert b.page.inner_text("#deployments tr[data-name='broken'] button.restart") == "Deploy again"

        # The recipe form: fields and defaults from the API's schema, checked here, then by the API.
        b.page.click("#deploy-box summary")
        deploys = _requests(b.page, "POST", "/api/deployments")
        b.page.fill("#f-deployment-num_replicas", "0")
        assert "must be ≥ 1" in b.page.inner_text("[data-error-for='deployment.num_replicas']")
        assert b.page.is_disabled("#deploy-submit")
        b.page.fill("#f-deployment-num_replicas", "1")
        b.page.fill("#f-name", "bad name!")
        b.page.fill("#f-deployment-engine-model", "models/base-model")
        assert 'name: "bad name!"' in b.page.inner_text("#deploy-yaml")
        with b.expect_status(422):  # the name rule is the API's
            b.page.click("#deploy-submit")
            b.wait("#banner:has-text('is not a valid model name')")
        b.page.fill("#f-name", "tiny3")
        with b.expect_status(503):
            b.page.click("#deploy-submit")
            b.wait("#banner:has-text('studio up')")
        assert len(deploys) == 2, deploys  # the invalid replica count never left the page
        b.shot("models-21-deploy-form")
        b.assert_clean()


def test_the_gate_its_margin_the_verdict_per_check_and_an_admins_forced_promotion(server):
    with chromium_page(server["base"], screenshot_dir()) as b:
        b.login(server["keys"]["user-2"])  # not the name's owner: reads the gate, changes nothing
        b.goto("#/models/rev")
        b.wait("#gate-owner-note")
        assert "Not gated" in b.page.inner_text("#gate-summary")
        assert b.page.locator("#gate-form, button.promote, #promote-force-box").count() == 0
        b.page.click("#logout")

        b.login(server["keys"]["user-1"])
        b.goto("#/models/rev")
        b.wait("#gate-form")
        puts = _requests(b.page, "PUT", "/gate")
        b.page.fill("#gate-dataset", "digits")
        b.page.fill("#gate-margin", "1.5")
        b.page.click("#gate-save")
        assert "must be from 0 to 1" in b.page.inner_text("[data-error-for='gate-margin']")
        assert puts == []  # refused here (the API's own 400 for it: tests/api/test_models.py)
        b.page.fill("#gate-dataset", "nope")
        b.page.fill("#gate-margin", "0.05")
        with b.expect_status(404):  # an unknown golden dataset is the API's refusal, in words
            b.page.click("#gate-save")
            b.wait("#banner:has-text('nope')")
        b.page.fill("#gate-dataset", "digits")
        b.page.click("#gate-save")
        b.wait("#banner:has-text('is saved')")
        assert "exact_match on digits" in b.page.inner_text("#gate-summary")
        assert "margin 0.05" in b.page.inner_text("#gate-summary")

        with b.expect_status(409):  # worse than the champion on the stored eval: refused, check by check
            b.page.click("button.promote[data-ref='rev@2']")
            b.wait("#gate-verdict[data-outcome='refused']")
        assert "rev@2 was not promoted" in b.banner()
        assert b.page.inner_text("[data-check='parity']") == "ok"
        assert b.page.inner_text("[data-check='eval vs champion']") == "does not beat"
        verdict = b.page.inner_text("#gate-verdict")
        assert f"eval #{server['eval_id']}" in verdict and "candidate 0.200 vs champion rev@1 0.600" in verdict
        with b.expect_status(409):  # PEFT and the served model disagree: refused before any eval
            b.page.click("button.promote[data-ref='rev@3']")
            b.wait("#gate-verdict:has-text('rev@3')")
        assert b.page.inner_text("[data-check='parity']") == "mismatch"
        assert "not run: the parity check refused first" in b.page.inner_text("#gate-verdict")
        b.wait("#promotions tbody tr:nth-child(2)")
        assert b.page.locator("#promotions .badge:text-is('REFUSED')").count() == 2
        b.page.click("#logout")

        b.login(server["keys"]["admin-1"])  # an admin's options for one promotion, each with a reason
        b.goto("#/models/rev")
        b.wait("#promote-force-box")
        promotes = _requests(b.page, "POST", "/promote")
        b.page.fill("#promote-margin", "-0.1")
        b.page.click("button.promote[data-ref='rev@2']")
        assert "must be from 0 to 1" in b.page.inner_text("[data-error-for='promote-margin']")
        b.page.fill("#promote-margin", "")
        b.page.check("#promote-force")
        b.page.click("button.promote[data-ref='rev@2']")
        assert "Say why" in b.banner()
        assert promotes == []
        b.page.fill("#promote-reason", "hotfix for ticket 7")
        b.page.click("button.promote[data-ref='rev@2']")
        b.wait("#gate-verdict[data-outcome='forced']")
        assert "rev@2 is now champion" in b.banner()
        b.wait("#promotions .badge:text-is('FORCED')")
        assert "admin-1 (reason: hotfix for ticket 7)" in b.page.inner_text("#promotions")
        # Every version links to its page in the MLflow UI, and to its training run's when it has one.
        link = b.page.get_attribute("a.mlflow-version >> nth=0", "href")
        assert link.startswith(f"{MLFLOW_UI}/#/models/rev/versions/"), link
        assert b.page.get_attribute("a.mlflow-run", "href") == f"{MLFLOW_UI}/#/runs/run1abc"
        assert b.page.locator("a.mlflow-version").count() == 3
        b.shot("models-22-gate-verdict")
        b.assert_clean()


def test_usage_over_time_a_line_per_model_across_the_days(server):
    with chromium_page(server["base"], screenshot_dir()) as b:
        b.login(server["keys"]["admin-1"])  # every key's calls
        b.goto("#/usage")
        b.wait("#usage-over-time svg[data-metric='calls per day']")
        chart = "#usage-over-time svg[data-metric='calls per day']"
        lines = {el.get_attribute("data-job"): el.get_attribute("points").split()
                 for el in b.page.locator(f"{chart} polyline.run").all()}
        assert sorted(lines) == ["other", "tiny"] and all(len(p) == 3 for p in lines.values()), lines
        tokens = b.page.locator("#usage-over-time svg[data-metric='tokens per day'] polyline.run")
        assert tokens.count() == 2
        days = [(datetime.now(UTC) - timedelta(days=d)).strftime("%Y-%m-%d") for d in (2, 0)]
        text = b.page.text_content(chart)
        assert days[0] in text and days[1] in text, text
        b.shot("usage-30-over-time")
        b.page.click("#logout")

        b.login(server["keys"]["user-1"])  # its own calls only: tiny on two days
        b.goto("#/usage")
        b.wait("#usage-over-time svg[data-metric='calls per day']")
        assert b.page.locator(f"{chart} polyline.run").count() == 1
        assert b.page.get_attribute(f"{chart} polyline.run", "data-job") == "tiny"
        b.page.click("#logout")

        b.login(server["keys"]["user-2"])  # none: the empty state
        b.goto("#/usage")
        b.wait("#usage-over-time-empty")
        b.assert_clean()
