"""`studio train sweep` and `studio jobs show` of a sweep, in-process on a real home (Ray not up,
no studio answering: the sweep is only queued). The run itself: tests/train/test_sweep.py."""

from __future__ import annotations

from pathlib import Path

from studio.jobs.status import JobStatus, create_job, transition
from studio.settings import StudioSettings
from studio.store.db import init_db, session_scope
from studio.store.models import Job
from studio.train.toy_data import ingest_toy_datasets
from tests.cli_invoke import invoke
from tests.loopback import free_port

SWEEP = Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "reverse_tiny_lr.yaml"


def test_cli_queues_a_sweep_and_shows_its_trials(tmp_path: Path, tiny_model_dir: Path, monkeypatch):
    home = tmp_path / "project" / ".studio"
    settings = StudioSettings(home=home, database_url=None, artifacts_uri=None, mlflow_uri=None, redis_url=None,
                              admin_key=None)
    init_db(settings.db_url)
    settings.models_dir.mkdir(parents=True)
    (settings.models_dir / "tiny").symlink_to(tiny_model_dir)
    ingest_toy_datasets(settings, tmp_path / "data")
    for var in ("STUDIO_DATABASE_URL", "STUDIO_ARTIFACTS_URI", "STUDIO_MLFLOW_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.setenv("STUDIO_HTTP_PORT", str(free_port()))

    code, out = invoke("train", "sweep", str(SWEEP), "space.hyper.learnin_rate=uniform(0.001, 0.01)")
    assert code == 1 and "space.hyper.learnin_rate" in out and "hyper.learning_rate" in out, out
    code, out = invoke("train", "sweep", str(SWEEP), "num_trials=0")
    assert code == 1 and "num_trials" in out, out
    code, out = invoke("train", "sweep", str(SWEEP), "num_trials=2")
    assert code == 0 and "QUEUED: 2 trial(s) of sft 'reverse-tiny-sweep' over hyper.learning_rate" in out, out
    assert "queued; run `studio up` to start it" in out

    with session_scope(settings.db_url) as s:
        sweep = s.query(Job).filter_by(kind="sweep").one()
        trial = create_job(s, name=sweep.name, spec={}, max_retries=0, submitted_by=f"sweep:{sweep.id}")
        trial.parent_id, trial.result = sweep.id, {"params": {"hyper.learning_rate": 0.0042}, "metrics": {"eval_loss": 0.5}}
        for to in (JobStatus.STARTING, JobStatus.RUNNING):
            transition(s, trial.id, to, "test")
        sweep_id, trial_id = sweep.id, trial.id
    code, out = invoke("jobs", "show", str(sweep_id))
    assert code == 0 and "sweep of sft on reverse-train@1" in out and "trials (1)" in out, out
    assert "hyper.learning_rate=0.0042" in out and "0.5000" in out and "RUNNING" in out
    code, out = invoke("jobs", "show", str(trial_id))
    assert code == 0 and f"trial of sweep job {sweep_id}" in out, out
    code, out = invoke("jobs", "cancel", str(trial_id))
    assert code == 1 and f"cancel the sweep: studio jobs cancel {sweep_id}" in out, out
