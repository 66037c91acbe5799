"""Every page in a real browser against the studio's HTTP app served by uvicorn on a real database
(no Ray: jobs stay QUEUED, /v1 answers 503), with 10 000 jobs and 10 000 dataset snapshots so the
lists must page on the server. Wrong input is shown in words; no console errors; a screenshot per page.
Each key sees what its role and ownership allow: a service key the playground only, a second user
key ("user-2") notes instead of the buttons on user-1's jobs, generations, evaluations and model."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import insert
from transformers import LlamaConfig

from studio.data.ingest import ingest_file
from studio.keys import create_key
from studio.registry.versions import register_version
from studio.settings import StudioSettings
from studio.store.db import init_db, session_scope
from studio.store.models import DatasetSnapshot, DatasetVersion, Job, JobMetric
from tests.jobs.inputs import make_model_dir
from tests.ui.browser import api_server, chromium_page, need_chromium, screenshot_dir

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]  # no Ray: a uvicorn and a browser
N_JOBS = 10_000
N_SNAPSHOTS = 10_000  # half as 5 000 names (one version each), half as versions of one name


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_chromium()
    home = tmp_path_factory.mktemp("ui-home")
    settings = StudioSettings(home=home)
    init_db(settings.db_url)
    now = datetime.now(UTC)
    with session_scope(settings.db_url) as s:
        made = {role: create_key(s, f"{role}-1", role) for role in ("admin", "user", "service")}
        made["user-2"] = create_key(s, "user-2", "user")
        keys = {role: secret for role, (secret, _) in made.items()}
        user_1 = made["user"][1].id
        # Bulk rows: the list page must stay fast because it asks the server for one page only.
        s.execute(insert(Job), [{"kind": "train", "name": f"bulk-{i}", "spec": {"method": "sft"},
                                 "status": "FAILED" if i % 10 == 0 else "SUCCEEDED", "attempts": 1,
                                 "max_retries": 0, "submitted_by": "bulk", "result": {},
                                 "created_at": now, "updated_at": now} for i in range(1, N_JOBS + 1)])
        snaps = [{"id": f"{i:064x}", "kind": "prompt_completion", "row_count": i, "columns": ["prompt", "completion"],
                  "uri": f"file:///bulk/{i}.parquet", "stats": {}, "created_at": now} for i in range(1, N_SNAPSHOTS + 1)]
        s.execute(insert(DatasetSnapshot), snaps)
        half = N_SNAPSHOTS // 2
        s.execute(insert(DatasetVersion), [  # "zz-" sorts after the datasets the tests make
            {"name": f"zz-bulk-{i:05d}", "version": 1, "snapshot_id": f"{i:064x}", "source": "bulk",
             "rejected_rows": 0, "created_at": now} for i in range(1, half + 1)] + [
            {"name": "zz-many", "version": i - half, "snapshot_id": f"{i:064x}", "source": "bulk",
             "rejected_rows": 0, "created_at": now} for i in range(half + 1, N_SNAPSHOTS + 1)])
        register_version(s, name="reverser", base_model="tiny", method="sft", adapter_type="lora",
                         uri=str(home / "adapter"), job_id=1, metrics={"exact_match": 0.97},
                         owner_key_id=user_1)  # user-1 registered the name: user-1 and admins promote
    model = make_model_dir(home / "models" / "base-model")
    # A model config with its size (no weights, no tokenizer): what the Plan panel can plan.
    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                vocab_size=300).save_pretrained(home / "models" / "sized")
    (home / "models" / "sized" / "model.safetensors").write_bytes(b"")  # preflight wants a weights file
    digits = home / "digits.jsonl"
    digits.write_text("".join(json.dumps({"prompt": f"reverse: {i}", "completion": str(i)[::-1]}) + "\n"
                              for i in range(10, 40)))
    ingest_file(digits, "digits", settings)
    notes = home / "notes.md"
    notes.write_text("# Reversing digits\n\nTo reverse 1 2 3, read it from the right: 3 2 1.\n")
    ingest_file(notes, "notes", settings)
    with api_server(home) as base:
        yield {"base": base, "keys": keys, "home": home, "model": model, "settings": settings, "user_1": user_1}


@pytest.fixture(scope="module")
def shots():
    return screenshot_dir()


def test_login_refuses_a_wrong_key_in_words_and_menus_follow_the_role(server, shots):
    with chromium_page(server["base"], shots) as b:
        b.page.goto(f"{server['base']}/ui/")
        b.page.wait_for_selector("#key")  # any page without a key leads to the login
        with b.expect_status(401):
            b.page.fill("#key", "sk-studio-wrong")
            b.page.click("#login")
            b.page.wait_for_function("document.getElementById('banner').textContent.length > 0")
        assert "invalid or revoked API key" in b.banner()
        b.shot("01-login-error")
        b.login(server["keys"]["user"])
        assert "user-1 · user" in b.page.inner_text("#who")
        assert b.page.locator("nav a", has_text="Keys").count() == 0
        assert "Jobs" in b.page.locator("nav a").all_inner_texts()
        b.page.click("#logout")
        # A service key only calls models: it lands on the playground (no models served here: a 503
        # in words) and the menu offers nothing else.
        with b.expect_status(503):
            b.login(server["keys"]["service"])
            b.page.wait_for_url("**/ui/#/playground")
            b.wait("#pg-unavailable")
        assert b.page.locator("nav a").all_inner_texts() == ["Playground"]
        assert "service-1 · service" in b.page.inner_text("#who")
        b.goto("#/jobs")  # a team page opened by hand says why, and asks the API nothing
        b.wait("#not-for-role")
        assert "admin and user keys" in b.page.inner_text("#not-for-role")
        b.shot("01b-service-key")
        b.page.click("#logout")
        b.login(server["keys"]["admin"])
        b.page.click("nav a:has-text('Keys')")
        b.wait("text=service-1")
        b.shot("08-keys")
        b.assert_clean()


def test_jobs_list_pages_on_the_server_and_filters_by_state(server, shots):
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user"])
        b.goto("#/jobs")
        rows = b.page.locator("#jobs-list tbody tr")
        rows.first.wait_for()
        assert rows.count() == 25
        assert rows.first.locator("td a").first.inner_text() == f"#{N_JOBS}"  # after the compare tick box
        assert rows.first.locator(".job-progress").inner_text() == "step 0/?"  # no total recorded: "?"
        b.shot("04-jobs")
        b.page.click("text=Next →")
        b.wait(f"#jobs-list a:text-is('#{N_JOBS - 25}')")
        b.page.select_option("#status-filter", "FAILED")
        b.wait(f"#jobs-list a:text-is('#{N_JOBS}')")
        states = b.page.locator("#jobs-list tbody tr .badge").all_inner_texts()
        assert len(states) == 25 and set(states) == {"FAILED"}
        b.assert_clean()


def test_dataset_lists_page_on_the_server_over_10000_snapshots(server, shots):
    half = N_SNAPSHOTS // 2
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user"])
        b.goto("#/datasets")
        b.wait("a:text-is('zz-bulk-00001')")
        names = b.page.locator("main a[href^='#/datasets/']").all_inner_texts()
        assert len(names) == 25, names  # one page of names, not 5 000
        for page in (2, 3, 4):
            b.page.click("text=Next →")
            b.wait(f".pager span:text-is('page {page}')")
        # names by name: digits, notes, then zz-bulk-00001…, so the 76th is zz-bulk-00074
        b.wait("a:text-is('zz-bulk-00074')")
        assert b.page.locator("main a[href^='#/datasets/']").count() == 25
        b.goto("#/datasets/zz-many")
        b.wait(f"a:text-is('zz-many@{half}')")  # newest first
        assert b.page.locator("main tbody tr").count() == 25
        b.page.click("text=Next →")
        b.wait(f"a:text-is('zz-many@{half - 25}')")
        b.shot("02b-dataset-versions")
        b.assert_clean()


def test_upload_with_mapping_then_browse_the_snapshot(server, shots, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"reverse: {i} {i + 1}", "answer": f"{i + 1} {i}"}) + "\n"
                            for i in range(30)) + "{broken\n")
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user"])
        b.goto("#/datasets")
        b.page.set_input_files("#upload-file", str(data))
        b.page.fill("#upload-name", "qa")
        with b.expect_status(400):  # without the mapping the columns are not a kind: said in words
            b.page.click("#upload-submit")
            b.page.wait_for_function("document.getElementById('banner').textContent.length > 0")
        assert "question" in b.banner() and "Fix:" in b.banner()
        for target, source in (("prompt", "question"), ("completion", "answer")):
            b.page.click("#add-map")
            b.page.locator(".map-row .map-target").last.select_option(target)
            b.page.locator(".map-row .map-source").last.fill(source)
        b.page.click("#upload-submit")
        report = b.page.locator("#ingest-report")
        report.locator("text=Created qa@1").wait_for()
        assert "30 rows kept, 1 dropped" in report.inner_text()
        assert "broken JSON" in report.inner_text()
        b.shot("02-datasets-upload")
        b.page.click("text=Open the snapshot")
        b.wait("#sample-rows tbody tr")
        assert b.page.locator("#sample-rows tbody tr").count() == 10
        assert "reverse: 0 1" in b.page.inner_text("#sample-rows")
        assert "prompt_completion" in b.page.inner_text("main")
        b.wait("#dropped-rows tbody tr")
        assert "broken JSON" in b.page.inner_text("#dropped-rows")
        b.wait("#snapshot-stats svg.chart")
        b.shot("03-snapshot")
        b.page.click("#sample-rows >> text=Next →")
        b.wait("#sample-rows >> text=reverse: 10 11")
        with b.page.expect_download() as download:  # an HTTP download with the key, no server path
            b.page.click("#download-jsonl")
        assert download.value.suggested_filename.endswith(".jsonl")
        rows = [json.loads(line) for line in open(download.value.path()).read().splitlines()]
        assert len(rows) == 30 and rows[0] == {"prompt": "reverse: 0 1", "completion": "1 0"}
        b.assert_clean()


def test_experiment_form_validates_inline_shows_the_recipe_and_submits(server, shots):
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user"])
        b.goto("#/new")
        b.wait("#f-hyper-learning_rate")
        submit = b.page.locator("#submit-job")
        assert submit.is_disabled()  # name, base model and dataset are required
        b.page.fill("#f-name", "bad name!")
        assert "must match" in b.page.inner_text("[data-error-for='name']")
        b.page.fill("#f-name", "ui-sft")
        b.page.fill("#f-base_model", str(server["home"] / "models" / "no-such-model"))
        b.page.fill("#f-data-dataset", "qa@1")
        b.page.fill("#f-hyper-learning_rate", "-1")
        assert b.page.inner_text("[data-error-for='hyper.learning_rate']") == "must be > 0"
        assert submit.is_disabled()
        b.page.fill("#f-hyper-learning_rate", "0.003")
        b.page.fill("#f-hyper-max_steps", "5")
        assert submit.is_enabled()
        recipe = b.page.inner_text("#recipe-yaml")
        assert recipe.startswith("# studio train submit ui-sft.yaml")
        for line in ("name: ui-sft", "method: sft", "  dataset: qa@1", "  learning_rate: 0.003", "  max_steps: 5"):
            assert line in recipe.splitlines(), recipe
        assert "batch_size" not in recipe  # defaults are left out, as in a hand-written recipe
        assert "studio train submit ui-sft.yaml" in b.page.inner_text("#recipe-cli")
        with b.expect_status(400):  # preflight: the server's words, not a stack trace
            submit.click()
            b.page.wait_for_function("document.getElementById('banner').textContent.length > 0")
        assert "no-such-model" in b.banner()
        # Plan before launching: the same 400 in the panel, then the plan of a model whose size is known.
        with b.expect_status(400):
            b.page.click("#plan-job")
            b.page.wait_for_function("document.getElementById('plan-panel').textContent.includes('no-such-model')")
        b.page.fill("#f-base_model", str(server["home"] / "models" / "sized"))
        b.page.click("#plan-job")
        # The API's first plan imports torch, accelerate and transformers to size the model: ~10 s
        # alone, over 30 s on a loaded 2-core box (a full run's failure, 2026-12-07).
        b.wait("#plan-fit", timeout_s=180)
        plan = b.page.inner_text("#plan-panel")
        assert "parameters trained" in plan and "peak memory per worker (RSS)" in plan and "(estimated)" in plan
        assert b.page.inner_text("#plan-fit").startswith("Fits: ")
        b.page.fill("#f-base_model", str(server["model"]))
        b.shot("05-new-experiment")
        submit.click()
        b.page.wait_for_url(f"**/ui/#/jobs/{N_JOBS + 1}")
        b.wait("#job-head .badge:text-is('QUEUED')")
        assert "submitted by user-1" in b.page.inner_text("#timeline")
        b.shot("06-job-queued")
        b.page.click("#cancel")
        b.wait("#job-head h1 .badge:text-is('CANCELLED')")
        b.page.click("#retry")
        b.page.wait_for_url(f"**/ui/#/jobs/{N_JOBS + 2}")
        b.wait("#job-head h1 .badge:text-is('QUEUED')")
        b.assert_clean()


def fill_small_recipe(b, server, name: str) -> None:
    """The New experiment form's recipe: the tiny model on digits@1, 4 steps."""
    b.page.fill("#f-name", name)
    b.page.fill("#f-base_model", str(server["model"]))
    b.page.fill("#f-data-dataset", "digits@1")
    b.page.fill("#f-hyper-max_steps", "4")


def test_start_a_sweep_from_the_experiment_form(server, shots):
    """The New experiment page's sweep card: the form's recipe as `train`, space rows, settings from
    SweepSpec's schema. The API's refusals (422 without the recipe's eval, 403 for a server path a
    user key may not name, 400 naming a space field the recipe lacks) land in the banner with the
    form as it was; a valid one is one QUEUED job of kind sweep with the body the form showed
    (nothing runs: no Ray here), and its page opens."""
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user"])
        b.goto("#/new")
        b.wait("#sweep-space .space-row")
        fill_small_recipe(b, server, "ui-sweep")
        field, domain = "#sweep-space .space-row .space-field", "#sweep-space .space-row .space-domain"
        assert b.page.input_value(field) == "hyper.learning_rate"  # the shipped sweep's space
        b.page.fill(field, "hyper.no_such_field")
        b.page.fill("#f-sweep-num_trials", "3")
        b.page.select_option("#f-sweep-search", "random")
        b.page.fill("#f-sweep-asha-grace_period", "2")
        sweep_yaml = b.page.inner_text("#sweep-yaml")
        assert sweep_yaml.startswith("# studio train sweep ui-sweep-sweep.yaml")
        for line in ("train:", "  name: ui-sweep", "space:", '  hyper.no_such_field: "loguniform(8e-4, 3e-3)"',
                     "num_trials: 3", "search: random", "asha:", "  grace_period: 2"):
            assert line in sweep_yaml.splitlines(), sweep_yaml
        with b.expect_status(422):  # eval_loss ranks trials: the recipe needs its Validation section
            b.page.click("#submit-sweep")
            b.page.wait_for_function("document.getElementById('banner').textContent.length > 0")
        b.banner_says("metric eval_loss needs the recipe's `eval` section")
        b.page.fill("#f-eval-split_ratio", "0.2")
        b.page.fill("#f-base_model", str(server["home"].parent))  # a user key names no server path
        with b.expect_status(403):
            b.page.click("#submit-sweep")
            b.page.wait_for_function("document.getElementById('banner').textContent.includes('base_model')")
        b.page.fill("#f-base_model", str(server["model"]))
        with b.expect_status(400):
            b.page.click("#submit-sweep")
            b.page.wait_for_function("document.getElementById('banner').textContent.includes('no_such_field')")
        b.banner_says("space.hyper.no_such_field: the recipe has no field 'hyper.no_such_field'")
        b.banner_says("hyper.learning_rate")  # the fix lists the recipe's fields
        assert b.page.url.endswith("#/new")
        assert b.page.input_value(field) == "hyper.no_such_field"  # the form is kept, the row marked
        assert "invalid" in (b.page.get_attribute(field, "class") or "")
        assert b.page.input_value("#f-sweep-num_trials") == "3"
        assert b.page.input_value("#f-eval-split_ratio") == "0.2"
        b.shot("05b-sweep-refused")
        b.page.fill(field, "hyper.learning_rate")
        b.page.fill(domain, "loguniform(1e-4, 1e-2)")
        b.page.click("#add-space-row")
        b.page.locator(".space-row .space-field").nth(1).fill("lora.r")
        b.page.locator(".space-row .space-domain").nth(1).fill("choice([4, 8])")
        b.page.click("#submit-sweep")
        b.page.wait_for_url("**/ui/#/jobs/*")
        b.wait("#job-head h1 .badge:text-is('QUEUED')")
        assert "sweep on digits@1" in b.page.inner_text("#job-about")
        assert "No trial has started yet." in b.page.inner_text("#trials")
        job_id = int(b.page.url.rsplit("/", 1)[1])
        b.assert_clean()
    job = httpx.get(f"{server['base']}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {server['keys']['user']}"},
                    timeout=30).json()
    assert job["kind"] == "sweep" and job["status"] == "QUEUED" and job["submitted_by"] == "user-1"
    spec = job["spec"]
    assert spec["space"] == {"hyper.learning_rate": "loguniform(1e-4, 1e-2)", "lora.r": "choice([4, 8])"}
    assert (spec["num_trials"], spec["search"], spec["metric"], spec["scheduler"]) == (3, "random", "eval_loss", "asha")
    assert spec["asha"] == {"grace_period": 2, "reduction_factor": 2.0} and spec["max_concurrent_trials"] is None
    train = spec["train"]
    assert train["name"] == "ui-sweep" and train["hyper"]["max_steps"] == 4 and train["eval"]["split_ratio"] == 0.2
    assert train["data"]["dataset"] == "digits@1"  # pinned as a training job's


def test_an_experiment_scores_itself_after_training_and_sweeps_on_exact_match(server, shots):
    """The form's After training (eval_after) section: left out until a field is set, then its
    dataset is required and its limits checked on the page; the YAML shows the block. An eval_after
    dataset the API refuses (documents: 400; no such name: 404) is its answer in the banner
    with the form kept and the field marked; then a sweep on exact_match is one QUEUED sweep job
    whose stored train.eval_after is what the form set."""
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user"])
        b.goto("#/new")
        b.wait("#f-eval_after-dataset")
        fill_small_recipe(b, server, "ui-em")
        submit, sweep = b.page.locator("#submit-job"), b.page.locator("#submit-sweep")
        assert submit.is_enabled() and "eval_after" not in b.page.inner_text("#recipe-yaml")  # empty: left out
        b.page.fill("#f-eval_after-limit", "0")
        assert b.page.inner_text("[data-error-for='eval_after.limit']") == "must be ≥ 1"
        assert b.page.inner_text("[data-error-for='eval_after.dataset']") == "required"  # once the section is used
        assert submit.is_disabled() and sweep.is_disabled()
        b.page.fill("#f-eval_after-limit", "5")
        b.page.fill("#f-eval_after-dataset", "notes")
        b.page.select_option("#f-eval_after-metric", "exact_match")
        b.page.fill("#f-eval_after-max_new_tokens", "8")
        assert submit.is_enabled()
        recipe = b.page.inner_text("#recipe-yaml").splitlines()
        block = recipe[recipe.index("eval_after:"):][:4]
        assert block == ["eval_after:", "  dataset: notes", "  max_new_tokens: 8", "  limit: 5"], recipe
        with b.expect_status(400):  # exact match scores prompts and answers: documents have none
            submit.click()
            b.page.wait_for_function("document.getElementById('banner').textContent.length > 0")
        b.banner_says("eval_after.dataset 'notes' holds document rows")
        b.page.select_option("#f-sweep-metric", "exact_match")
        b.page.fill("#f-eval_after-dataset", "nope")
        sweep_yaml = b.page.inner_text("#sweep-yaml").splitlines()
        assert "metric: exact_match" in sweep_yaml
        assert sweep_yaml[sweep_yaml.index("  eval_after:"):][:4] == [
            "  eval_after:", "    dataset: nope", "    max_new_tokens: 8", "    limit: 5"], sweep_yaml
        with b.expect_status(404):
            sweep.click()
            b.page.wait_for_function("document.getElementById('banner').textContent.includes('nope')")
        b.banner_says("eval_after.dataset: no dataset named 'nope'")
        assert b.page.url.endswith("#/new")
        assert b.page.input_value("#f-eval_after-dataset") == "nope"  # the form is kept, the field marked
        assert "invalid" in (b.page.get_attribute("#f-eval_after-dataset", "class") or "")
        assert b.page.input_value("#f-eval_after-limit") == "5"
        assert b.page.input_value("#f-sweep-metric") == "exact_match"
        b.shot("05c-eval-after-refused")
        b.page.fill("#f-eval_after-dataset", "digits")
        sweep.click()
        b.page.wait_for_url("**/ui/#/jobs/*")
        b.wait("#job-head h1 .badge:text-is('QUEUED')")
        job_id = int(b.page.url.rsplit("/", 1)[1])
        b.assert_clean()
    job = httpx.get(f"{server['base']}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {server['keys']['user']}"},
                    timeout=30).json()
    assert job["kind"] == "sweep" and job["status"] == "QUEUED" and job["spec"]["metric"] == "exact_match"
    assert job["spec"]["train"]["name"] == "ui-em" and job["spec"]["train"]["eval"] is None
    assert job["spec"]["train"]["eval_after"] == {"dataset": "digits", "metric": "exact_match", "max_new_tokens": 8,
                                                  "limit": 5}


def test_models_promote_and_what_a_service_key_sees(server, shots):
    with chromium_page(server["base"], shots) as b:
        with b.expect_status(503):  # it lands on the playground: no models served here
            b.login(server["keys"]["service"])
            b.wait("#pg-unavailable")
        b.goto("#/models/reverser")
        b.wait("#not-for-role")
        assert b.page.locator("button.promote").count() == 0
        b.page.click("#logout")
        b.login(server["keys"]["user-2"])  # a team member who does not own the name
        b.goto("#/models/reverser")
        b.wait("#promote-owner-note")
        assert "only the name's owner or an admin can promote" in b.page.inner_text("#promote-owner-note")
        assert b.page.locator("button.promote, button.archive, #promote-force").count() == 0
        b.page.click("#logout")
        b.login(server["keys"]["user"])
        # Deployments without Ray: none, or (if the API cannot tell here) its words in the card.
        with b.expect_status(503):
            b.goto("#/models")
            b.wait("#deployments p")  # "Loading…" first, then the answer
            b.page.wait_for_function("() => !document.querySelector('#deployments').innerText.includes('Loading')",
                                     timeout=30_000)
        card = b.page.inner_text("#deployments")
        assert "No models are deployed." in card or "running studio" in card, card
        assert b.banner() == ""  # the rest of the page works
        b.wait("main td a:text-is('reverser')")
        assert "user-1" in b.page.locator("tr", has_text="reverser").inner_text()  # its owner
        b.page.click("text=reverser")
        b.wait("text=exact_match 0.97")
        assert b.page.locator("#promote-owner-note, #promote-force").count() == 0  # force: admins only
        assert "null" not in b.page.inner_text("main")
        b.page.click("button.promote[data-ref='reverser@1']")
        b.wait("text=reverser@1 is now champion.")
        b.wait("td .badge:text-is('champion')")  # the table reloads after the banner
        assert b.page.locator("td .badge:text-is('champion')").count() == 1
        b.shot("07-models")
        b.goto("#/playground")  # no models served here: the API's 503 in words
        with b.expect_status(503):
            b.page.reload()
            b.wait("#pg-unavailable")
        assert "no models are served" in b.page.inner_text("#pg-unavailable")
        b.page.click("#logout")
        b.login(server["keys"]["admin"])  # an admin may force past the gate, and must say why
        b.goto("#/models/reverser")
        b.wait("#promote-force")
        b.page.check("#promote-force")
        b.page.click("button.archive[data-ref='reverser@1']")
        b.wait("text=reverser@1 is now archived.")  # archiving passes no gate: nothing forced
        b.wait("button.promote[data-ref='reverser@1']")
        b.page.click("button.promote[data-ref='reverser@1']")
        b.wait("#banner:has-text('Say why you force the promotion')")
        b.page.fill("#promote-reason", "ui test: no gate set")
        b.page.click("button.promote[data-ref='reverser@1']")
        b.wait("text=reverser@1 is now champion.")
        b.shot("07b-models-admin")
        b.assert_clean()


def test_evaluations_experiments_and_usage_pages(server, shots):
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user"])
        with b.expect_status(503):  # the form asks /v1/models for suggestions; none served here
            b.goto("#/evals")
            b.wait("#ev-start")
        b.page.fill("#ev-dataset", "digits@1")
        b.page.fill("#ev-models", "tiny, reverser@1")
        b.page.fill("#ev-limit", "5")
        assert "  - exact_match" in b.page.inner_text("#ev-yaml") or "type: exact_match" in b.page.inner_text("#ev-yaml")
        with b.expect_status(503):  # no gateway without `studio up`: the API's words, shown
            b.page.click("#ev-start")
            b.page.wait_for_function("document.getElementById('banner').textContent.length > 0")
        assert "cannot check the model names" in b.banner() and "Fix:" in b.banner()
        b.shot("09-evaluations")

        b.goto("#/usage")
        b.wait("#usage >> text=No gateway calls in this period.")
        b.page.select_option("#usage-group", "day")
        b.shot("10-usage")

        b.goto("#/experiments")
        b.page.fill("#exp-alias", "bad alias!")
        b.page.locator(".arm-model").first.fill("tiny")
        with b.expect_status(422):
            b.page.click("#exp-create")
            b.page.wait_for_function("document.getElementById('banner').textContent.length > 0")
        assert "alias" in b.banner()
        b.shot("11-experiments")
        b.assert_clean()


def test_start_synthetic_generation_and_watch_it(server, shots):
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user"])
        b.goto("#/datasets")
        b.wait("#sy-start")
        b.page.fill("#sy-source", "digits@1")
        b.page.fill("#sy-name", "digits-qa")
        b.page.fill("#sy-max-chunks", "2")
        with b.expect_status(400):  # not documents: the API's words
            b.page.click("#sy-start")
            b.page.wait_for_function("document.getElementById('banner').textContent.length > 0")
        assert "prompt_completion" in b.banner() and "Fix:" in b.banner()
        b.page.fill("#sy-source", "notes@1")
        b.page.click("#sy-start")
        b.wait("#synth-head h1 .badge:text-is('QUEUED')")  # no scheduler here: it waits
        assert "Generation #" in b.page.inner_text("#synth-head")
        b.shot("12-synth")
        b.assert_clean()


def test_a_second_user_sees_notes_instead_of_buttons_on_objects_it_does_not_own(server, shots):
    """user-1 owns a queued and a cancelled job, a queued generation and a queued evaluation;
    user-2 sees them all (the team's catalog) but no Cancel or Retry, and the note saying who may.
    The API refuses those calls too (tests/api); the page does not offer what can only fail."""
    from studio.jobs.status import create_job
    from studio.store.db import session_scope

    user_1 = {"Authorization": f"Bearer {server['keys']['user']}"}
    spec = {"name": "owned", "method": "sft", "base_model": str(server["model"]), "data": {"dataset": "digits@1"},
            "hyper": {"max_steps": 1}}
    queued = httpx.post(f"{server['base']}/api/jobs", json=spec, headers=user_1, timeout=30)
    assert queued.status_code == 201, queued.text
    stopped = httpx.post(f"{server['base']}/api/jobs", json=spec, headers=user_1, timeout=30).json()
    assert httpx.post(f"{server['base']}/api/jobs/{stopped['id']}/cancel", headers=user_1, timeout=30).status_code == 202
    synth = httpx.post(f"{server['base']}/api/synth", json={"spec": {"source": "notes@1", "name": "notes-qa", "mode": "qa",
                                                                     "model": "judge"}}, headers=user_1, timeout=30)
    assert synth.status_code == 201, synth.text
    with session_scope(server["settings"].db_url) as s:  # an eval needs the gateway to submit: stored as queued
        # What a run with an eval section reports: eval_loss is drawn over loss, not as a chart of its own.
        s.add_all(JobMetric(job_id=stopped["id"], attempt=1, step=step, key=key, value=value)
                  for step, key, value in [(1, "loss", 2.0), (2, "loss", 1.6), (2, "eval_loss", 1.8), (2, "lr", 1e-3)])
        ev = create_job(s, name="owned-eval", kind="eval", max_retries=0, submitted_by="user-1",
                        owner_key_id=server["user_1"],
                        spec={"dataset": "digits@1", "models": ["tiny"], "scorers": [{"type": "exact_match"}]}).id
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user-2"])
        b.goto(f"#/jobs/{queued.json()['id']}")
        b.wait("#job-owner-note")
        assert "only its owner or an admin can cancel" in b.page.inner_text("#job-owner-note")
        assert b.page.locator("#cancel, #retry").count() == 0
        assert "spec is shown to its owner and admins only" in b.page.inner_text("#spec-hidden")
        assert "sft on — · base —" in b.page.inner_text("#job-about")  # inputs are in the hidden spec
        assert b.page.inner_text("#progress-text") == "step 0/1"  # the server's line: steps of max_steps
        b.wait("#log-state:text-is('only its owner or an admin can read the logs')")
        assert not b.page.locator("#log").is_visible()
        b.shot("13-job-of-another-key")
        b.goto(f"#/jobs/{stopped['id']}")
        b.wait("#job-head h1 .badge:text-is('CANCELLED')")
        b.wait("#job-owner-note")
        assert "only its owner or an admin can retry" in b.page.inner_text("#job-owner-note")
        assert b.page.locator("#cancel, #retry").count() == 0
        b.goto(f"#/synth/{synth.json()['id']}")
        b.wait("#sy-owner-note")
        assert b.page.locator("#sy-cancel").count() == 0
        b.goto(f"#/evals/{ev}")
        b.wait("#ev-owner-note")
        assert b.page.locator("#ev-cancel").count() == 0
        b.page.click("#logout")
        b.login(server["keys"]["user"])  # the owner has the buttons and the spec
        b.goto(f"#/jobs/{stopped['id']}")
        b.wait("#retry")
        b.wait("svg.chart[data-metric='loss'][data-second='eval_loss'][data-second-points='1']")
        assert b.page.locator("svg.chart[data-metric='eval_loss']").count() == 0
        assert b.page.locator("svg.chart[data-metric='loss'] polyline.second").count() == 1
        assert "digits@1" in b.page.inner_text("#job-about")
        assert b.page.locator("#job-owner-note, #spec-hidden").count() == 0
        b.goto(f"#/evals/{ev}")
        b.wait("#ev-cancel")
        b.assert_clean()
