"""The UI's main walk in a real browser against a live `studio up` serving the tiny model:
login → upload + ingest → configure and start an SFT job → watch it to SUCCEEDED with a live loss
chart and log → compare base vs the new adapter side by side in the playground → run an eval →
promote; then an A/B experiment between them with feedback, and the usage all of it made.
The stack (an engine costs ~3 GB and ~45 s to start) is the tiny-model one this module shares with
the evaluation and gateway e2e modules (tests/stacks.py); run it under the heavy lock."""

from __future__ import annotations

import random
import re
import time

import pytest

from studio.models.tiny import reversal_example
from tests.ui.browser import chromium_page, need_chromium, screenshot_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def studio(tiny_stack):
    need_chromium()  # before the expensive part
    stack = tiny_stack.ensure()
    return {"base": stack.base, "home": stack.home, "model": stack.model, "admin": stack.admin}


def test_login_ingest_train_watch_and_compare(studio, tmp_path):
    shots = screenshot_dir()
    rng = random.Random(0)
    data = tmp_path / "reverse.csv"
    lines = ["question,answer"] + [",".join(f'"{x}"' for x in reversal_example(rng)) for _ in range(200)]
    data.write_text("\n".join(lines) + "\n")
    with chromium_page(studio["base"], shots) as b:
        b.login(studio["admin"])

        b.goto("#/datasets")
        b.page.set_input_files("#upload-file", str(data))
        b.page.fill("#upload-name", "reverse")
        for target, source in (("prompt", "question"), ("completion", "answer")):
            b.page.click("#add-map")
            b.page.locator(".map-row .map-target").last.select_option(target)
            b.page.locator(".map-row .map-source").last.fill(source)
        b.page.click("#upload-submit")
        b.page.locator("#ingest-report >> text=Created reverse@1").wait_for(timeout=60_000)
        b.shot("stack-01-datasets")

        b.goto("#/new")
        b.page.wait_for_selector("#f-hyper-learning_rate")
        for sel, value in (("#f-name", "ui-reverse"), ("#f-base_model", str(studio["model"])),
                           ("#f-data-dataset", "reverse@1"), ("#f-hyper-max_steps", "12"),
                           ("#f-hyper-learning_rate", "0.003"), ("#f-hyper-batch_size", "16"),
                           ("#f-hyper-max_seq_length", "64"), ("#f-hyper-logging_steps", "2"),
                           ("#f-max_retries", "0")):
            b.page.fill(sel, value)
        assert "max_steps: 12" in b.page.inner_text("#recipe-yaml")
        b.shot("stack-02-new-experiment")
        b.page.click("#submit-job")
        # The stack is shared (tests/stacks.py): the job's id is whatever this run was given.
        b.page.wait_for_url(re.compile(r".*/ui/#/jobs/\d+$"))
        b.page.wait_for_selector("#job-head h1 .badge:text-is('RUNNING')", timeout=240_000)
        b.page.wait_for_selector("svg.chart[data-metric='loss']", timeout=240_000)
        b.page.wait_for_selector("#job-head h1 .badge:text-is('SUCCEEDED')", timeout=300_000)
        b.page.wait_for_selector("#log-state:text-is('ended: SUCCEEDED')", timeout=60_000)
        points = int(b.page.get_attribute("svg.chart[data-metric='loss']", "data-points"))
        assert points >= 3, points  # logging every 2 of 12 steps
        assert b.page.inner_text("#log").strip(), "the live log tail stayed empty"
        timeline = b.page.inner_text("#timeline")
        for state in ("QUEUED", "STARTING", "RUNNING", "SUCCEEDED"):
            assert state in timeline, timeline
        b.shot("stack-03-job-succeeded")

        b.goto("#/playground")
        b.page.wait_for_selector("#pg-model-1")
        b.page.select_option("#pg-model-0", "tiny")
        b.page.select_option("#pg-model-1", "ui-reverse@1")
        b.page.fill("#pg-prompt", "reverse: 1 2 3")
        b.page.fill("#pg-max-tokens", "8")
        b.page.click("#pg-run")
        for i in (0, 1):
            b.page.wait_for_selector(f".answer:nth-child({i + 1})[data-done]", timeout=180_000)
        b.shot("stack-04-playground")
        for i in (0, 1):
            stats = b.page.inner_text(f"#pg-stats-{i}")
            assert not stats.startswith("error"), stats
            tokens = re.search(r"(\d+) tokens", stats)
            assert tokens and int(tokens.group(1)) >= 1, stats
            # A random-init model may answer only whitespace: any text at all gives a first token.
            streamed = b.page.eval_on_selector(f"#pg-answer-{i}", "e => e.textContent.length")
            assert ("first token" in stats) if streamed else ("no text streamed" in stats), stats
        assert "served by tiny" in b.page.inner_text("#pg-stats-0")
        assert "served by ui-reverse@1" in b.page.inner_text("#pg-stats-1")
        b.page.click("#pg-votes-1 .pg-better")  # feedback on the logged answers, by response id
        b.wait("#pg-votes-1 .pg-feedback-note:text-is('recorded: this one is better')")
        b.page.click("#pg-votes-0 .pg-up")
        b.wait("#pg-votes-0 .pg-feedback-note:text-is('recorded: good')")
        b.assert_clean()


def test_evaluate_promote_ab_test_and_read_usage(studio):
    """After the walk above (reverse@1 ingested, ui-reverse@1 trained): base vs adapter through the
    gateway, the leaderboard filling in, per-datapoint answers; promote the adapter; an A/B
    experiment base vs champion with traffic and feedback per arm; then the usage those calls made."""
    shots = screenshot_dir()
    with chromium_page(studio["base"], shots) as b:
        b.login(studio["admin"])
        b.goto("#/evals")
        b.wait("#ev-start")
        b.page.fill("#ev-name", "ui-eval")
        b.page.fill("#ev-dataset", "reverse@1")
        b.page.fill("#ev-models", "tiny, ui-reverse@1")
        b.page.fill("#ev-limit", "8")
        b.page.fill("#ev-max-tokens", "8")
        b.page.click("#ev-start")
        b.wait("#eval-head h1 .badge", timeout_s=30)
        # The leaderboard fills in live while the run goes: every answer scored is the outcome
        # this page shows (the run's own end state is the eval service's contract).
        b.wait("#eval-head .eval-progress:text-matches('^rows 16/16')", timeout_s=300)
        board = b.page.inner_text("#leaderboard")
        assert "tiny" in board and "ui-reverse@1" in board and "exact_match" in board, board
        b.wait("#eval-results tbody tr")
        assert b.page.locator("#eval-results tbody tr").count() == 16  # 8 rows × 2 models (page of 20)
        b.shot("stack-05-evaluation")

        b.goto("#/models/ui-reverse")
        b.page.click("button.promote[data-ref='ui-reverse@1']")
        b.wait("text=ui-reverse@1 is now champion.")
        b.wait("td .badge:text-is('champion')")
        b.goto("#/models")  # names with their champion, and the deployments serving them
        b.wait("#deployments td:text-is('tiny')")
        assert "ui-reverse@1" in b.page.inner_text("main")
        b.shot("stack-06-models")

        b.goto("#/experiments")
        b.page.fill("#exp-alias", "ui-reverse-ab")
        b.page.locator(".arm-model").nth(0).fill("tiny")
        b.page.locator(".arm-model").nth(1).fill("ui-reverse")  # the champion
        b.page.click("#exp-create")
        b.page.wait_for_url("**/ui/#/experiments/ui-reverse-ab")
        b.wait("#exp-arms-stats tbody tr")
        b.goto("#/playground")
        b.wait("#pg-model-1")
        for _ in range(10):  # the Router re-reads active experiments every second
            if b.page.locator("#pg-model-0 option[value='ui-reverse-ab']").count():
                break
            time.sleep(1)
            b.page.reload()
            b.wait("#pg-model-1")
        b.page.select_option("#pg-model-0", "ui-reverse-ab")
        b.page.select_option("#pg-model-1", "ui-reverse-ab")
        b.page.fill("#pg-prompt", "reverse: 4 5 6")
        b.page.fill("#pg-max-tokens", "8")
        b.page.click("#pg-run")
        for i in (0, 1):
            b.page.wait_for_selector(f".answer:nth-child({i + 1})[data-done]", timeout=120_000)
            assert not b.page.inner_text(f"#pg-stats-{i}").startswith("error"), b.page.inner_text(f"#pg-stats-{i}")
        b.page.click("#pg-votes-0 .pg-better")
        b.wait("#pg-votes-0 .pg-feedback-note:text-is('recorded: this one is better')")
        b.page.click("#pg-votes-1 .pg-down")
        b.wait("#pg-votes-1 .pg-feedback-note:text-is('recorded: bad')")
        b.goto("#/experiments/ui-reverse-ab")
        b.wait("#exp-summary:has-text('2 requests · 2 feedback')")  # live: the page polls
        arms = b.page.locator("#exp-arms-stats tbody tr")
        assert arms.count() == 2
        table = b.page.inner_text("#exp-arms-stats")
        assert "tiny" in table and "ui-reverse" in table and "50%" in table, table
        served = sum(int(arms.nth(i).locator("td").nth(2).inner_text()) for i in range(2))
        assert served == 2, table
        b.shot("stack-07-ab-experiment")

        b.goto("#/usage")
        b.page.select_option("#usage-days", "")
        b.wait("#usage tbody tr")
        usage = b.page.inner_text("#usage")
        assert "eval" in usage and "playground" in usage, usage  # the playground calls the gateway
        b.shot("stack-08-usage")
        b.assert_clean()


def test_deploy_and_evict_a_base_model_from_the_models_page(studio):
    """An admin deploys a second base model from the recipe form (the tiny model's folder under
    another name), watches its state go DEPLOYING → READY on the page (polled; the deploy call
    answers once it serves), restarts it (busy, then READY again from its stored recipe), then evicts
    it (EVICTED). The form's refusals are
    tests/ui/test_models_page.py's, without an engine."""
    with chromium_page(studio["base"], screenshot_dir()) as b:
        b.login(studio["admin"])
        b.goto("#/models")
        b.wait("#deploy-box summary")
        b.page.click("#deploy-box summary")
        for sel, value in (("#f-name", "ui-tiny2"), ("#f-deployment-engine-model", str(studio["model"])),
                           ("#f-deployment-engine-dtype", "float32"), ("#f-deployment-engine-max_model_len", "512"),
                           ("#f-deployment-engine-kv_cache_space_gib", "1"), ("#f-deployment-num_cpus", "0.5")):
            b.page.fill(sel, value)
        b.page.click("#deploy-submit")
        row = "#deployments tr[data-name='ui-tiny2']"
        b.wait(f"{row} .badge:text-is('DEPLOYING')", timeout_s=60)  # the poll shows it while the call waits
        b.wait("#banner:has-text('ui-tiny2: ready')", timeout_s=600)
        b.wait(f"{row} .badge:text-is('READY')", timeout_s=15)
        assert b.page.inner_text(f"{row} td:nth-child(4)") == "1"  # one healthy replica
        b.shot("stack-09-deployed")
        # Restart: the ready model goes back through restoring and serves again from its recipe.
        b.page.click(f"{row} button.restart")
        b.wait(f"{row} .busy", timeout_s=15)  # the page says it is restarting while the call waits
        # The call answers (the banner: its outcome, or its error at once) within the recipe's
        # deploy_timeout_s (600) + 135 s (docs/serving.md, "Restart").
        b.wait("#banner:not([hidden])", timeout_s=800)
        assert b.banner().startswith("ui-tiny2: ready"), b.banner()
        b.wait(f"{row} .badge:text-is('READY')", timeout_s=15)
        assert b.page.inner_text(f"{row} td:nth-child(4)") == "1"
        b.page.click(f"{row} button.evict")
        b.wait("#banner:has-text('ui-tiny2: evicted')", timeout_s=120)
        b.wait(f"{row} .badge:text-is('EVICTED')", timeout_s=15)
        b.assert_clean()
