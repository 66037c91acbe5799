"""A training job's ``eval`` (validation during training) and ``tracking`` sections through
``POST /api/jobs``: malformed sections are 422 naming the field; a split that leaves nothing to train
on, an unknown or mismatched validation snapshot or ``eval_after`` dataset and a tracker whose
package is missing are refused (4xx naming the field and the fix) before anything is queued; a good
one is queued with the validation snapshot pinned to name@N. The runs themselves: tests/train/test_dpo_cpt.py and
tests/train/test_job_retry_resume.py."""

from __future__ import annotations

import importlib.util

import pytest

from tests.api.checks import assert_problem, bearer
from tests.jobs.inputs import ingest_datasets, make_model_dir, train_spec


@pytest.fixture
def spec(settings, tmp_path) -> dict:
    ingest_datasets(settings, tmp_path / "data")  # digits: 20 prompt_completion rows; prose: 5 text rows
    return train_spec(make_model_dir(settings.models_dir / "model"))


def post(client, key, body):
    return client.post("/api/jobs", headers=bearer(key), json=body)


def nothing_queued(client, key) -> bool:
    return client.get("/api/jobs", headers=bearer(key)).json() == []


MALFORMED = [  # (change, the field the 422 names or "" for a section-level rule, words in the detail)
    ({"eval": {"split_ratio": 1.5}}, "eval.split_ratio", "less than 1"),
    ({"eval": {"split_ratio": 0}}, "eval.split_ratio", "greater than 0"),
    ({"eval": {"eval_steps": 10}}, "eval", "exactly one of 'dataset'"),
    ({"eval": {"dataset": "digits", "split_ratio": 0.1}}, "eval", "exactly one of 'dataset'"),
    ({"eval": {"split_ratio": 0.1, "early_stopping_patience": 0}}, "eval.early_stopping_patience", "greater than"),
    ({"eval": {"split_ratio": 0.1, "steps": 5}}, "eval.steps", "Extra inputs"),
    ({"eval": {"split_ratio": 0.1}, "data": {"dataset": "digits", "split": "all"}}, "", "data.split=train"),
    ({"eval": {"split_ratio": 0.2}, "data": {"dataset": "digits", "validation_ratio": 0.1}}, "", "disagree"),
    ({"tracking": {"report_to": ["comet"]}}, "tracking.report_to.0", "mlflow"),
]


def test_malformed_eval_and_tracking_are_422_naming_the_field(client, user_key, spec):
    for change, field, words in MALFORMED:
        problem = assert_problem(post(client, user_key, {**spec, **change}), 422, words)
        if field:
            assert field in [e["field"] for e in problem["errors"]], (change, problem["errors"])
    assert nothing_queued(client, user_key)


def test_grpo_validates_on_held_out_prompts_in_whole_groups(client, user_key, spec):
    grpo = {**spec, "name": "grpo-job", "method": "grpo", "hyper": {"max_steps": 2, "batch_size": 4},
            "grpo": {"num_generations": 4}}
    # An evaluation batch must hold whole groups (num_generations completions of one prompt), as a training step.
    assert_problem(post(client, user_key, {**grpo, "eval": {"split_ratio": 0.1, "batch_size": 6}}), 422,
                   "eval.batch_size x resources.num_workers = 6", "grpo.num_generations = 4")
    assert nothing_queued(client, user_key)
    # Held-out prompts, early stopping on eval_reward (the metric GRPO's evaluation has).
    body = {**grpo, "eval": {"split_ratio": 0.1, "eval_steps": 1, "batch_size": 8, "early_stopping_patience": 2}}
    r = post(client, user_key, body)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["eval"]["early_stopping_patience"] == 2


def test_a_split_that_leaves_no_training_rows_is_400_naming_the_field(client, user_key, spec):
    # 20 rows: 0.98 rounds to 20 held out.
    problem = assert_problem(post(client, user_key, {**spec, "eval": {"split_ratio": 0.98}}), 400,
                             "eval.split_ratio 0.98 holds out all 20 rows", "0 rows are left for training")
    assert "lower eval.split_ratio" in problem["fix"]
    assert nothing_queued(client, user_key)


def test_unknown_or_mismatched_validation_snapshot_is_refused(client, user_key, spec):
    problem = assert_problem(post(client, user_key, {**spec, "eval": {"dataset": "nope"}}), 404,
                             "eval.dataset:", "'nope'")
    assert "studio data ls" in problem["fix"]
    assert_problem(post(client, user_key, {**spec, "eval": {"dataset": "prose"}}), 400,
                   "eval.dataset 'prose' holds text rows", "holds prompt_completion rows")
    assert nothing_queued(client, user_key)


def test_an_unknown_or_unscorable_eval_after_dataset_is_refused_then_queued(client, user_key, spec):
    # eval_after's dataset is read only once training ended: checked at submit, like eval.dataset.
    problem = assert_problem(post(client, user_key, {**spec, "eval_after": {"dataset": "nope"}}), 404,
                             "eval_after.dataset:", "'nope'")
    assert "studio data ls" in problem["fix"]
    assert_problem(post(client, user_key, {**spec, "eval_after": {"dataset": "prose"}}), 400,
                   "eval_after.dataset 'prose' holds text rows", "prompt_completion or chat")
    assert nothing_queued(client, user_key)
    r = post(client, user_key, {**spec, "eval_after": {"dataset": "digits", "limit": 5}})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["eval_after"] == {"dataset": "digits", "metric": "exact_match", "max_new_tokens": 16,
                                              "limit": 5}


def test_a_tracker_that_is_not_installed_names_the_package(client, user_key, spec, monkeypatch):
    # wandb is in the studio's environment: the test hides it (whether a package is installed is
    # the machine's, not the studio's code).
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    problem = assert_problem(post(client, user_key, {**spec, "tracking": {"report_to": ["mlflow", "wandb"]}}),
                             400, "tracking.report_to names wandb", "not installed")
    assert "pip install wandb" in problem["fix"]
    assert nothing_queued(client, user_key)


def test_eval_and_tracking_are_queued_with_the_validation_snapshot_pinned(client, user_key, spec):
    body = {**spec, "eval": {"dataset": "digits", "eval_steps": 2, "early_stopping_patience": 3},
            "tracking": {"report_to": ["mlflow", "tensorboard", "tensorboard"]}}
    r = post(client, user_key, body)
    assert r.status_code == 201, r.text
    stored = r.json()["spec"]
    assert stored["eval"] == {"dataset": "digits@1", "split_ratio": None, "eval_steps": 2, "batch_size": None,
                              "early_stopping_patience": 3}
    assert stored["tracking"] == {"report_to": ["mlflow", "tensorboard"]}
    r = post(client, user_key, {**spec, "name": "split-job", "eval": {"split_ratio": 0.25}})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["tracking"] == {"report_to": ["mlflow"]}  # the default
