"""The data and feedback flows in a real browser against the studio's HTTP app under uvicorn (no
Ray: jobs stay QUEUED unless the test runs one in-process): a snapshot's curate, diff, split and
download; an A/B experiment's feedback exported as DPO data and a DPO job started from its champion;
a synthetic generation whose rows appear on its page while it runs (the generator is a scripted
OpenAI-compatible server at the gateway's edge, where a paid provider would be). Each key sees what
its role and ownership allow; no console errors; each action's outcome is checked on the page."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from studio.data.ingest import ingest_file, ingest_path
from studio.data.snapshots import split_indices
from studio.experiments.ab import ArmSpec, ExperimentSpec, create_experiment
from studio.registry.versions import register_version
from studio.store.db import session_scope
from studio.store.models import Completion, Feedback
from tests.jobs.inputs import make_model_dir
from tests.ui.browser import api_server, chromium_page, screenshot_dir, ui_home

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]  # no Ray: a uvicorn and a browser

# 30 digit rows, two exact duplicates and one row with an e-mail address: a curation with exact
# dedupe and redact keeps 31 rows, drops 2 and redacts 1 (the same prompt: a changed row in a diff).
ROWS = ([{"prompt": f"reverse: {i}", "completion": str(i)[::-1]} for i in range(10, 40)]
        + [{"prompt": "reverse: 10", "completion": "01"}, {"prompt": "reverse: 11", "completion": "11"}]
        + [{"prompt": "who answers?", "completion": "write to ann@example.com"}])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ui = ui_home(tmp_path_factory, "ui-data-home")
    home, settings, keys, user_1 = ui.home, ui.settings, ui.keys, ui.key_ids["user-1"]
    digits = home / "digits.jsonl"
    digits.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    ingest_file(digits, "digits", settings)
    docs = home / "manuals"
    docs.mkdir()
    for i, topic in enumerate(["tides", "rivers", "glaciers", "deltas"]):
        (docs / f"{i}-{topic}.md").write_text(f"# {topic.title()}\n\nA short note about {topic} and how they move.\n")
    ingest_path(str(docs), "manuals", settings, check_roots=False)
    # The champion of "reverser": a LoRA adapter on a local base model, registered by user-1.
    model = make_model_dir(home / "models" / "base-model")
    adapter = home / "adapters" / "reverser-1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "base_model_name_or_path": str(model)}))
    with session_scope(settings.db_url) as s:
        mv = register_version(s, name="reverser", base_model=str(model), method="sft", adapter_type="lora",
                              uri=str(adapter), owner_key_id=user_1)
        mv.stage = "champion"
        for alias in ("rev-ab", "quiet-ab"):
            create_experiment(s, ExperimentSpec(alias=alias, arms=[ArmSpec(model="base-model", weight=1),
                                                                  ArmSpec(model="reverser", weight=1)]),
                              "user-1", None, user_1)
        # rev-ab's answers: one explicit preference and a +1/-1 pair on another prompt; quiet-ab has none.
        answers = [("c1", "reverse: 12", "21", "reverser@1"), ("c2", "reverse: 12", "12", "base-model"),
                   ("c3", "reverse: 34", "43", "reverser@1"), ("c4", "reverse: 34", "34", "base-model")]
        for cid, prompt, response, version in answers:
            s.add(Completion(id=cid, endpoint="chat", requested_model="rev-ab", experiment="rev-ab",
                             arm=version.split("@")[0], model_version=version,
                             prompt=[{"role": "user", "content": prompt}], prompt_text=prompt,
                             response=response, latency_ms=5.0, owner_key_id=user_1))
        s.flush()
        s.add_all([Feedback(completion_id="c2", preferred_completion_id="c1", key_name="user-1", owner_key_id=user_1),
                   Feedback(completion_id="c3", rating=1, key_name="user-1", owner_key_id=user_1),
                   Feedback(completion_id="c4", rating=-1, key_name="user-1", owner_key_id=user_1)])
    with api_server(home) as base:
        yield {"base": base, "keys": keys, "home": home, "model": model, "settings": settings}


@pytest.fixture(scope="module")
def shots():
    return screenshot_dir()


def test_a_snapshot_is_curated_diffed_split_and_downloaded(server, shots):
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user-1"])
        b.goto("#/snapshots/digits@1")
        b.wait("#curate-add")
        # Exact duplicates only (near_threshold emptied: null), then redact: the recipe as YAML.
        b.page.select_option("#curate-add-type", "dedupe")
        b.page.click("#curate-add")
        b.page.fill("#f-steps-0-near_threshold", "")
        b.page.select_option("#curate-add-type", "redact")
        b.page.click("#curate-add")
        yaml = b.page.inner_text("#curate-yaml")
        assert "source: digits@1" in yaml and "near_threshold: null" in yaml and "- type: redact" in yaml
        b.page.fill("#curate-name", "digits-clean")
        b.page.click("#curate-run")
        b.wait("#curate-outcome")
        assert b.page.inner_text("#curate-outcome").startswith(
            "Created digits-clean@1 · 31 rows kept · 2 dropped · 1 redactions")
        b.shot("20-snapshot-curate")
        # The diff against the curated snapshot: 2 duplicates removed, the redacted row changed.
        b.page.click("#curate-diff")
        b.wait("#diff-summary")
        assert b.page.inner_text("#diff-summary") == (
            "digits@1 → digits-clean@1: 30 rows in both · 2 removed · 1 changed · 0 added (33 → 31 rows)")
        changed = b.page.inner_text("#diff-changed")
        assert "ann@example.com" in changed and "[EMAIL]" in changed
        assert b.page.locator("#diff-removed tbody tr").count() == 2
        b.shot("21-snapshot-diff")
        # A curation that keeps nothing is the API's 400 in words; nothing is stored.
        b.page.click("#curate-add")  # redact again, then a length bound no row meets
        b.page.select_option("#curate-add-type", "length")
        b.page.click("#curate-add")
        b.page.fill("#f-steps-3-min_chars", "100000")
        with b.expect_status(400):
            b.page.click("#curate-run")
            b.page.wait_for_function("document.getElementById('banner').textContent.length > 0")
        assert "dropped every row" in b.banner() and "Fix:" in b.banner()
        # The validation split of the download: JSONL, the rows the split holds.
        val = len(split_indices(len(ROWS), "validation", 0.25, 7))
        b.page.select_option("#export-split", "validation")
        b.page.fill("#export-ratio", "0.25")
        b.page.fill("#export-seed", "7")
        with b.page.expect_download() as download:
            b.page.click("#download-jsonl")
        assert download.value.suggested_filename == "digits-v1-validation.jsonl"
        with open(download.value.path()) as f:
            assert len(f.read().splitlines()) == val
        b.assert_clean()
    with chromium_page(server["base"], shots) as b:  # an admin splits it
        b.login(server["keys"]["admin-1"])
        b.goto("#/snapshots/digits@1")
        b.wait("#split-run")
        b.page.fill("#split-ratio", "0.25")
        b.page.fill("#split-seed", "7")
        b.page.click("#split-run")
        b.wait("#split-outcome")
        assert b.page.inner_text("#split-outcome") == (
            f"digits-train@1 {len(ROWS) - val} rows · digits-validation@1 {val} rows · seed 7, validation ratio 0.25")
        b.page.click("#split-outcome a:has-text('digits-validation@1')")
        b.wait(f"#sample-rows p.muted:text-is('{val} rows')")
        b.shot("22-snapshot-split")
        b.assert_clean()


def test_feedback_becomes_dpo_data_and_a_dpo_job_from_the_champion(server, shots):
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user-1"])
        b.goto("#/experiments/quiet-ab")  # no feedback yet: the API's words, nothing stored
        b.wait("#dpo-export")
        with b.expect_status(400):
            b.page.click("#dpo-export")
            b.wait("#dpo-export-error")
        assert "has no rated pairs to export" in b.page.inner_text("#dpo-export-error")
        assert b.page.locator("#dpo-start").count() == 0
        b.goto("#/experiments/rev-ab")
        b.wait("#dpo-export")
        b.page.click("#dpo-export")
        b.wait("#dpo-export-outcome")
        assert b.page.inner_text("#dpo-export-outcome").startswith(
            "Stored rev-ab-prefs@1 · 2 preference pairs (1 explicit, 1 from ratings)")
        # Step 2, pre-filled from the champion: its adapter, its base model, the new snapshot.
        b.page.wait_for_function("document.getElementById('dpo-base-model').value.length > 0")
        assert b.page.input_value("#dpo-init-adapter") == "reverser@1"
        assert b.page.input_value("#dpo-base-model") == str(server["model"])
        assert b.page.input_value("#dpo-dataset") == "rev-ab-prefs@1"
        assert "reverser@1 (champion)" in b.page.inner_text("#dpo-from")
        assert "method: dpo" in b.page.inner_text("#dpo-yaml")
        b.shot("23-experiment-dpo-flow")
        b.page.click("#dpo-start")
        b.wait("#dpo-job-link")
        assert "QUEUED" in b.page.inner_text("#dpo-job-outcome")
        job_id = int(b.page.get_attribute("#dpo-job-link", "href").rsplit("/", 1)[1])
        b.page.click("#dpo-job-link")
        b.wait("#job-head h1 .badge:text-is('QUEUED')")
        assert "rev-ab-prefs@1" in b.page.inner_text("#job-about")
        b.assert_clean()
    job = httpx.get(f"{server['base']}/api/jobs/{job_id}", timeout=30,
                    headers={"Authorization": f"Bearer {server['keys']['user-1']}"}).json()
    assert (job["spec"]["method"], job["spec"]["init_adapter"], job["spec"]["data"]["dataset"]) == (
        "dpo", "reverser@1", "rev-ab-prefs@1")
    with chromium_page(server["base"], shots) as b:  # another user: a note; an admin: the export
        b.login(server["keys"]["user-2"])
        b.goto("#/experiments/rev-ab")
        b.wait("#dpo-owner-note")
        assert b.page.locator("#dpo-export").count() == 0
        b.page.click("#logout")
        b.login(server["keys"]["admin-1"])
        b.goto("#/experiments/rev-ab")
        b.page.click("#dpo-export")
        b.wait("#dpo-export-outcome")
        assert b.page.inner_text("#dpo-export-outcome").startswith("Unchanged (same pairs): rev-ab-prefs@1")
        b.assert_clean()


def test_generated_rows_appear_while_the_generation_runs(server, shots):
    from studio.data.synth.run import run_job
    from studio.gateway import Client
    from studio.jobs.status import JobStatus, transition
    from tests.data.fake_generator import FakeGenerator

    gen = FakeGenerator().start()
    gen.pause_after = 1  # the first chunk is answered, the others wait for the page to look
    runner = None
    try:
        with chromium_page(server["base"], shots) as b:
            b.login(server["keys"]["user-1"])
            b.goto("#/datasets")
            b.page.fill("#sy-source", "manuals")
            b.page.fill("#sy-name", "manuals-qa")
            b.page.fill("#sy-model", "gen")
            b.page.fill("#sy-pairs", "2")
            b.page.click("#sy-start")
            b.wait("#synth-head h1 .badge:text-is('QUEUED')")
            job_id = int(b.page.url.rsplit("/", 1)[1])
            b.wait("#synth-row-count:text-is('0 rows generated of about 8 asked for')")
            with session_scope(server["settings"].db_url) as s:  # the scheduler's part, then the job's
                transition(s, job_id, JobStatus.STARTING, "submitted")
            client = Client(service="synth", job_id=str(job_id), base_url=gen.base, api_key="sk-test", max_retries=0)
            runner = threading.Thread(target=run_job, args=(job_id, server["settings"], client), daemon=True)
            runner.start()
            # Half done: the first chunk's two rows are on the page while the job runs.
            b.wait("#synth-head h1 .badge:text-is('RUNNING')")
            b.wait("#synth-row-count:text-matches('^2 rows generated of about 8')")
            assert b.page.locator("#synth-rows tbody tr").count() == 2
            assert "What is" in b.page.inner_text("#synth-rows")
            b.shot("24-synth-streaming")
            gen.release.set()
            b.wait("#synth-head h1 .badge:text-is('SUCCEEDED')")
            b.wait("#synth-row-count:text-matches('^8 rows generated')")
            assert b.page.locator("#synth-rows tbody tr").count() == 8
            assert "chunks 4/4" in b.page.inner_text("#synth-progress")
            b.wait("#synth-result a:text-is('manuals-qa@1')")
            b.shot("25-synth-done")
            b.assert_clean()
    finally:
        gen.release.set()
        if runner is not None:
            runner.join(timeout=60)
        gen.stop()
