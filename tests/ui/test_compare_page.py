"""The compare view in a real browser against uvicorn on a real database (no Ray): two training
runs stored directly (tests/api/test_jobs_compare.py's), ticked on the jobs list and compared: the
differing recipe field highlighted, loss and eval_loss overlaid (a line per run), "—" where a run
recorded no peak memory, the eval score of the version one registered; another user sees the numbers
but not the recipes; fewer than two ids is refused in words."""

from __future__ import annotations

import pytest

from tests.api.test_jobs_compare import store_runs
from tests.ui.browser import api_server, chromium_page, screenshot_dir, ui_home

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]  # no Ray: a uvicorn and a browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ui = ui_home(tmp_path_factory, "ui-compare-home", team=())
    home, settings = ui.home, ui.settings
    stored = store_runs(settings)
    with api_server(home) as base:
        yield {"base": base, "settings": settings, **stored}


def test_tick_two_runs_and_compare_them(server):
    a, b = server["first"], server["second"]
    with chromium_page(server["base"], screenshot_dir()) as br:
        br.login(server["alice"])
        br.goto("#/jobs")
        br.wait(f"input.pick[data-job='{a}']")
        assert br.page.locator(f"input.pick[data-job='{server['eval']}']").count() == 0  # training runs only
        assert br.page.locator("#compare").is_disabled()
        br.page.check(f"input.pick[data-job='{a}']")
        assert br.page.locator("#compare").is_disabled()  # one run is not a comparison
        br.page.check(f"input.pick[data-job='{b}']")
        assert br.page.inner_text("#compare") == "Compare 2 runs"
        br.page.click("#compare")
        br.wait("#recipe-table")
        assert br.page.url.endswith(f"#/compare/{a},{b}")

        differs = br.page.locator("#recipe-table tr.differs")
        assert differs.count() == 1 and differs.get_attribute("data-key") == "hyper.learning_rate"
        assert "0.003" in differs.inner_text() and "0.001" in differs.inner_text()
        rows = br.page.locator("#recipe-table tbody tr").count()
        assert rows > 5 and f"1 of {rows} fields differ" in br.page.inner_text("#recipe-summary")
        assert br.page.locator("#recipe-hidden").count() == 0

        for metric in ("loss", "eval_loss"):
            chart = br.page.locator(f"#compare-charts svg[data-metric='{metric}']")
            assert chart.get_attribute("data-lines") == "2"
            assert chart.locator("polyline.run").count() == 2
        peak = br.page.inner_text("#compare-runs tr[data-key='peak memory']")
        assert "812 (peak_memory_mb)" in peak and "—" in peak
        assert "2m10s" in br.page.inner_text("#compare-runs tr[data-key='wall time']")
        scores = br.page.inner_text("#compare-scores")
        assert "rev@2" in scores and "0.75" in scores and "digits@1" in scores
        assert "train_loss" in br.page.inner_text("#compare-final")
        br.shot("compare-01-runs")

        br.page.check("#only-diff")
        assert br.page.locator("#recipe-table tbody tr").count() == 1
        br.assert_clean()


def test_another_user_sees_the_numbers_not_the_recipes_and_bad_ids_are_refused_in_words(server):
    a, b = server["first"], server["second"]
    with chromium_page(server["base"], screenshot_dir()) as br:
        br.login(server["bob"])
        br.goto(f"#/compare/{a},{b}")
        br.wait("#recipe-hidden")
        assert "owner and admins only" in br.page.inner_text("#recipe-hidden")
        assert br.page.locator("#recipe-table tr.differs").count() == 0
        assert br.page.locator("#compare-charts svg[data-metric='loss']").get_attribute("data-lines") == "2"
        br.shot("compare-02-not-owner")
        with br.expect_status(400):
            br.goto(f"#/compare/{a}")
            br.wait("#banner:not([hidden])")
            assert "at least 2 jobs, got 1" in br.banner()
        br.assert_clean()


def test_a_sweeps_page_lists_its_trials(server):
    """A sweep's job page: its trials (params, eval_loss, state, the registered one) linking to
    their own pages, which link back to the sweep (rows stored as studio.train.sweep_run leaves them)."""
    from studio.jobs.status import JobStatus, create_job, transition
    from studio.store.db import session_scope
    from studio.store.models import ApiKey, JobMetric

    with session_scope(server["settings"].db_url) as s:
        alice = s.query(ApiKey).filter_by(name="alice").one()
        sweep = create_job(s, name="rev-sweep", kind="sweep", max_retries=0, submitted_by="alice",
                           owner_key_id=alice.id, spec={"train": {"data": {"dataset": "digits@1"}, "base_model": "tiny"}})
        trials = []
        for lr, loss, end in ((3e-3, 0.75, JobStatus.SUCCEEDED), (1e-2, 1.25, JobStatus.CANCELLED)):
            t = create_job(s, name="rev-sweep", spec={}, max_retries=0, submitted_by=f"sweep:{sweep.id}",
                           owner_key_id=alice.id)
            t.parent_id = sweep.id
            t.result = {"params": {"hyper.learning_rate": lr}, "sweep_trial": f"t{lr}",
                        **({"model": "rev-sweep@1", "metrics": {"eval_loss": loss}} if end is JobStatus.SUCCEEDED else {})}
            s.add(JobMetric(job_id=t.id, attempt=1, step=10, key="eval_loss", value=loss))
            for to in (JobStatus.STARTING, JobStatus.RUNNING, *((JobStatus.CHECKPOINTING,) if end is JobStatus.SUCCEEDED else ()), end):
                transition(s, t.id, to, "test")
            trials.append(t.id)
        sweep_id = sweep.id
    with chromium_page(server["base"], screenshot_dir()) as br:
        br.login(server["alice"])
        br.goto(f"#/jobs/{sweep_id}")
        br.wait("#trials table")
        assert "Trials (2)" in br.page.inner_text("#trials h2")
        rows = br.page.locator("#trials tbody tr")
        first, second = rows.nth(0).inner_text(), rows.nth(1).inner_text()
        assert f"#{trials[0]}" in first and "hyper.learning_rate=0.003" in first and "0.7500" in first
        assert "SUCCEEDED" in first and "rev-sweep@1" in first
        assert "hyper.learning_rate=0.01" in second and "1.2500" in second and "CANCELLED" in second
        assert "sweep on digits@1" in br.page.inner_text("#job-about")
        br.page.click(f"#trials a[href='#/jobs/{trials[1]}']")
        br.wait("#sweep-link")
        assert f"sweep #{sweep_id}" in br.page.inner_text("#sweep-link")

