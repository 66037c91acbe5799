"""The Ray Tune side of a sweep, built by ``studio.train.sweep_run`` and inspected without training:
the search algorithm and scheduler ``make_tuner`` hands Tune (after Tune's own ``set_search_properties``,
as ``Tuner.fit`` calls it), ``concurrent_trials`` over a few cluster shapes (and the module's local
Ray), ``CancelStopper`` against a real SQLite row being cancelled (alone, and stopping a real Tune
run of a stand-in trainable), which trial a sweep registers, and an exact_match trial's score (the
tiny model, no training). The sweep run end to end: tests/train/test_sweep.py."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.schedulers.util import _set_search_properties_backwards_compatible as scheduler_set_search_props
from ray.tune.search import sample
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.util import _set_search_properties_backwards_compatible as searcher_set_search_props

from studio.jobs.queue import request_cancel
from studio.jobs.status import JobStatus, create_job, transition
from studio.settings import StudioSettings
from studio.store.db import init_db, session_scope
from studio.train.sweep import SweepSpec
from studio.train.preflight import ResolvedInputs
from studio.train.sweep_run import TRIAL_CPU, CancelStopper, best_trial, concurrent_trials, make_tuner, trial_score
from studio.train.worker import FINAL_DIR

SPACE = {"hyper.learning_rate": "loguniform(1e-4, 1e-2)", "lora.r": "choice([4, 8, 16])",
         "hyper.batch_size": "randint(2, 9)"}
LOCAL_CPUS = 4
pytestmark = [pytest.mark.slow, pytest.mark.no_engine]  # a local Ray of its own (the module fixture)


def sweep_spec(**fields) -> SweepSpec:
    train = {"name": "rev-sweep", "method": "sft", "base_model": "tiny", "data": {"dataset": "reverse-train"},
             "hyper": {"max_steps": 4}, "eval": {"split_ratio": 0.1}, "eval_after": {"dataset": "reverse-test"},
             "resources": {"num_workers": 1}}
    train["resources"].update(fields.pop("resources", {}))
    train.update(fields.pop("train", {}))
    return SweepSpec.model_validate({"train": train, "space": SPACE, "num_trials": 10, **fields})


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A small local Ray of its own (``ray.cluster_resources()`` says LOCAL_CPUS), for the module."""
    temp_dir = tempfile.mkdtemp(prefix="ray-tuner-")  # short: Ray's unix sockets live under it
    ray.init(address="local", num_cpus=LOCAL_CPUS, include_dashboard=False, _temp_dir=temp_dir,
             logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def plain_settings(tmp_path: Path) -> StudioSettings:
    return StudioSettings(home=tmp_path / ".studio", database_url=None, artifacts_uri=None, mlflow_uri=None,
                          redis_url=None, admin_key=None)


@pytest.fixture
def db_settings(plain_settings: StudioSettings) -> Iterator[StudioSettings]:
    """The same home with its SQLite database migrated."""
    init_db(plain_settings.db_url)
    yield plain_settings
    from studio.store import db as store_db

    store_db.get_engine(plain_settings.db_url).dispose()
    store_db.get_engine.cache_clear()


def tune_config_of(tuner: tune.Tuner):
    """The TuneConfig and search space the Tuner will run, its metric and mode handed to the
    search algorithm and scheduler as ``tune.run`` does at ``fit()``."""
    internal = tuner._local_tuner
    config, space = internal._tune_config, internal.param_space
    if config.search_alg is not None:
        assert searcher_set_search_props(config.search_alg.set_search_properties, config.metric, config.mode, space)
    assert scheduler_set_search_props(config.scheduler.set_search_properties, config.metric, config.mode)
    return config, space


# ---------------------------------------------------------------- search and scheduler

@pytest.mark.parametrize(("metric", "mode", "direction"), [("eval_loss", "min", "MINIMIZE"),
                                                           ("exact_match", "max", "MAXIMIZE")])
def test_optuna_search_is_tpe_over_the_space_on_the_metric(local_ray, plain_settings, metric, mode, direction):
    import optuna

    spec = sweep_spec(search="optuna", metric=metric, seed=7)
    config, _ = tune_config_of(make_tuner(plain_settings, spec, 1, 1, {}))
    assert (config.metric, config.mode, config.num_samples) == (metric, mode, 10)
    search = config.search_alg
    assert isinstance(search, OptunaSearch)
    assert isinstance(search._ot_study.sampler, optuna.samplers.TPESampler) and search._seed == 7
    assert search._ot_study.direction.name == direction
    lr, rank, batch = (search._space[k] for k in SPACE)
    assert isinstance(lr, optuna.distributions.FloatDistribution) and (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
    assert isinstance(rank, optuna.distributions.CategoricalDistribution) and rank.choices == (4, 8, 16)
    # Tune's randint excludes its upper bound; Optuna's IntDistribution includes it.
    assert isinstance(batch, optuna.distributions.IntDistribution) and (batch.low, batch.high) == (2, 8)


def test_random_search_is_tunes_variant_generator_over_the_space_and_seeded(local_ray, plain_settings):
    spec = sweep_spec(search="random", seed=3)

    def draws():
        config, space = tune_config_of(make_tuner(plain_settings, spec, 1, 1, {}))
        # No search algorithm: Tune's BasicVariantGenerator samples the domains (numpy's global RNG).
        assert config.search_alg is None
        return config, space, [[space[k].sample() for k in SPACE] for _ in range(5)]

    config, space, first = draws()
    lr, rank, batch = (space[k] for k in SPACE)
    assert isinstance(lr, sample.Float) and isinstance(lr.get_sampler(), sample.LogUniform)
    assert (lr.lower, lr.upper) == (1e-4, 1e-2)
    assert isinstance(rank, sample.Categorical) and rank.categories == [4, 8, 16]
    assert isinstance(batch, sample.Integer) and (batch.lower, batch.upper) == (2, 9)
    assert all(1e-4 <= a <= 1e-2 and b in (4, 8, 16) and 2 <= c < 9 for a, b, c in first)
    assert draws()[2] == first  # seed 3 again: the same trials


@pytest.mark.parametrize(("metric", "mode"), [("eval_loss", "min"), ("exact_match", "max")])
def test_asha_stops_on_the_metric_with_the_specs_grace_and_reduction(local_ray, plain_settings, metric, mode):
    spec = sweep_spec(metric=metric, scheduler="asha", asha={"grace_period": 3, "reduction_factor": 3})
    config, _ = tune_config_of(make_tuner(plain_settings, spec, 1, 1, {}))
    asha = config.scheduler
    assert isinstance(asha, ASHAScheduler)
    assert (asha._metric, asha._mode, asha._time_attr) == (metric, mode, "training_iteration")
    assert asha._reduction_factor == 3
    # Its rungs: grace_period reports, then x reduction_factor each.
    rungs = sorted(milestone for milestone, _ in asha._brackets[0]._rungs)
    assert rungs[:3] == [3, 9, 27]


def test_fifo_runs_every_trial_to_the_end(local_ray, plain_settings):
    config, _ = tune_config_of(make_tuner(plain_settings, sweep_spec(scheduler="fifo"), 1, 1, {}))
    assert type(config.scheduler) is FIFOScheduler


# ---------------------------------------------------------------- trials at once

@pytest.mark.parametrize(("resources", "cluster", "limits", "expected"), [
    # CPU: each trial is its workers' CPUs plus its Tune actor's TRIAL_CPU (8 of 1 CPU do not fit 8).
    ({"num_workers": 1, "cpus_per_worker": 1}, {"CPU": 8}, {}, 7),
    ({"num_workers": 2, "cpus_per_worker": 1}, {"CPU": 8}, {}, 3),
    ({"num_workers": 1, "cpus_per_worker": 4}, {"CPU": 2}, {}, 1),  # none fits: still one (it waits)
    # GPU: the workers' GPUs, gpus_per_worker counted.
    ({"num_workers": 2, "use_gpu": True, "gpus_per_worker": 1}, {"CPU": 64, "GPU": 4}, {}, 2),
    ({"num_workers": 1, "use_gpu": True, "gpus_per_worker": 2}, {"CPU": 64, "GPU": 2}, {}, 1),
    ({"num_workers": 2, "use_gpu": True, "gpus_per_worker": 0.5}, {"CPU": 64, "GPU": 2}, {}, 2),
    ({"num_workers": 3, "use_gpu": True, "gpus_per_worker": 0.3}, {"CPU": 64, "GPU": 0.9}, {}, 1),
    # Capped by the spec.
    ({"num_workers": 1}, {"CPU": 64}, {"max_concurrent_trials": 2}, 2),
    ({"num_workers": 1}, {"CPU": 64}, {"num_trials": 3}, 3),
])
def test_concurrent_trials_fit_the_cluster_and_the_spec(plain_settings, resources, cluster, limits, expected):
    spec = sweep_spec(resources=resources, **limits)
    assert concurrent_trials(spec, plain_settings, cluster) == expected


def test_concurrent_trials_count_the_workers_custom_resources(tmp_path):
    settings = StudioSettings(home=tmp_path / ".studio", database_url=None, artifacts_uri=None, mlflow_uri=None,
                              redis_url=None, admin_key=None, train_worker_resources={"training": 1})
    assert concurrent_trials(sweep_spec(), settings, {"CPU": 64, "training": 2}) == 2
    assert concurrent_trials(sweep_spec(), settings, {"CPU": 64}) == 1


def test_the_tuner_runs_as_many_trials_as_the_local_cluster_holds(local_ray, plain_settings):
    spec = sweep_spec(resources={"num_workers": 1, "cpus_per_worker": 1})
    assert ray.cluster_resources()["CPU"] == LOCAL_CPUS
    assert concurrent_trials(spec, plain_settings) == int(LOCAL_CPUS / (1 + TRIAL_CPU)) == 3
    config, _ = tune_config_of(make_tuner(plain_settings, spec, 1, 1, {}))
    assert config.max_concurrent_trials == 3


# ---------------------------------------------------------------- cancel

def running_sweep(settings: StudioSettings) -> int:
    with session_scope(settings.db_url) as s:
        job = create_job(s, name="rev-sweep", kind="sweep", spec={}, max_retries=0, submitted_by="test")
        for to in (JobStatus.STARTING, JobStatus.RUNNING):
            transition(s, job.id, to, "test")
        return job.id


def test_cancel_stopper_stops_every_trial_within_2_s_of_the_cancel(db_settings):
    job_id = running_sweep(db_settings)
    stopper = CancelStopper(db_settings.db_url, job_id)
    assert not stopper.stop_all() and not stopper("trial_1", {"eval_loss": 1.0})
    with session_scope(db_settings.db_url) as s:
        request_cancel(s, job_id, by="test")
    cancelled_at = time.monotonic()
    while not stopper.stop_all():
        # It reads the row at most every 2 s; 3 s leaves room for a slow query on a loaded machine.
        assert time.monotonic() - cancelled_at < 3, "the stopper did not notice the cancel in 3 s"
        time.sleep(0.05)
    assert stopper("trial_1", {"eval_loss": 1.0}) and stopper("trial_2", {})
    with session_scope(db_settings.db_url) as s:  # the scheduler then records it CANCELLED: still stopped
        transition(s, job_id, JobStatus.CANCELLED, "test")
    assert stopper.stop_all()


def test_a_real_tune_run_ends_soon_after_the_sweep_is_cancelled(local_ray, db_settings, tmp_path):
    job_id = running_sweep(db_settings)
    reported = tmp_path / "reported"  # the trial's first report has happened (it runs in another process)

    def forever(config):  # a trial that would report for ever
        step = 0
        while True:
            step += 1
            tune.report({"eval_loss": 1.0 / step})
            if step == 2:
                reported.touch()
            time.sleep(0.1)

    # time_budget_s: a stopper that never stops fails the test (it would end the run 60 s in) instead
    # of hanging it.
    tuner = tune.Tuner(forever, tune_config=tune.TuneConfig(metric="eval_loss", mode="min", num_samples=1,
                                                            time_budget_s=60),
                       run_config=tune.RunConfig(name="cancel", storage_path=str(tmp_path / "tune"), verbose=0,
                                                 stop=CancelStopper(db_settings.db_url, job_id)))
    cancelled_at: list[float] = []

    def cancel():
        # Once the trial has reported twice, however long its start took on a loaded machine (a timer
        # of 3 s once cancelled a trial that had not reported yet: no training_iteration to check).
        deadline = time.monotonic() + 50
        while not reported.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with session_scope(db_settings.db_url) as s:
            request_cancel(s, job_id, by="test")
        cancelled_at.append(time.monotonic())

    thread = threading.Thread(target=cancel, daemon=True)
    thread.start()
    grid = tuner.fit()
    thread.join(timeout=60)
    assert reported.exists(), "the trial never reported twice"
    ended_after = time.monotonic() - cancelled_at[0]
    assert ended_after < 20, f"Tune ran {ended_after:.1f} s past the cancel"
    assert grid[0].metrics["training_iteration"] > 1  # it ran, and was stopped, not failed
    assert grid[0].error is None


# ---------------------------------------------------------------- the trial registered

@pytest.mark.parametrize(("metric", "best"), [("eval_loss", 0.2), ("exact_match", 0.9)])
def test_the_registered_trial_has_the_best_metric_lowest_loss_highest_exact_match(tmp_path, metric, best):
    results = [tune.Result(metrics={metric: v, "trial_job_id": i, "finished": 1}, checkpoint=None, error=None,
                           path=str(tmp_path / f"t{i}")) for i, v in enumerate([0.5, 0.9, 0.2])]
    assert best_trial(sweep_spec(metric=metric), results).metrics[metric] == best


def test_an_exact_match_trial_is_scored_by_its_checkpoints_eval_after(home, tmp_path):
    """trial_score of an exact_match sweep: the trial's final adapter (untrained: the tiny model's own
    answers) on eval_after's dataset, no eval_loss needed. The probe set has one row whose completion
    is that answer and one that is not: 0.5."""
    from peft import LoraConfig, get_peft_model
    from ray.train import Checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.data.ingest import ingest_file
    from studio.train.evaluate import exact_match

    base = str(home.models_dir / "tiny")
    adapter = tmp_path / "checkpoint" / FINAL_DIR
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")).save_pretrained(str(adapter))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(adapter))  # as a trial's final adapter has it
    rows = [{"prompt": "reverse: abc", "completion": "cba"}, {"prompt": "reverse: hello", "completion": "olleh"}]
    answer = exact_match(base, str(adapter), rows[:1], max_new_tokens=4)["samples"][0]["got"]
    assert answer.strip() and answer.strip() != "cba"
    probe = tmp_path / "probe.jsonl"
    probe.write_text(json.dumps({**rows[0], "completion": answer}) + "\n" + json.dumps(rows[1]) + "\n")
    ingest_file(probe, "em-probe", home)

    sweep = sweep_spec(metric="exact_match", train={"eval_after": {"dataset": "em-probe", "max_new_tokens": 4}})
    spec = sweep.trial_spec({"hyper.learning_rate": 1e-3}, "t1")
    inputs = ResolvedInputs(base_model=base, snapshot_id="", snapshot_uri="", snapshot_kind="sft", dataset_ref="")
    result = SimpleNamespace(checkpoint=Checkpoint(str(adapter.parent)), metrics={})
    assert trial_score(home, sweep, spec, inputs, 0, result) == {"exact_match": 0.5}
