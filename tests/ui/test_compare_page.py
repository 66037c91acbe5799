"""The compare view in a real browser against uvicorn on a real database (no Ray): two training
runs stored directly (tests/api/test_jobs_compare.py's), ticked on the jobs list and compared: the
differing recipe field highlighted, loss and eval_loss overlaid (a line per run), "—" where a run
recorded no peak memory, the eval score of the version one registered; another user sees the numbers
but not the recipes; fewer than two ids is refused in words."""

from __future__ import annotations

import pytest

from studio.settings import StudioSettings
from studio.store.db import init_db
from tests.api.test_jobs_compare import store_runs
from tests.ui.browser import api_server, chromium_page, need_chromium, screenshot_dir

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]  # no Ray: a uvicorn and a browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_chromium()
    home = tmp_path_factory.mktemp("ui-compare-home")
    settings = StudioSettings(home=home)
    init_db(settings.db_url)
    stored = store_runs(settings)
    with api_server(home) as base:
        yield {"base": base, **stored}


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
