"""A training recipe's ``after_training``: once the job SUCCEEDED, the scheduler's reconcile pass
queues the auto-eval, and once that eval is done promotes through the gate (auto-promotion) or
records the means (auto-eval only). On SQLite and PostgreSQL, through the real gateway to the
scripted provider; no Ray is needed because a pass with nothing to submit or poll never calls it
(the queued evals are run here the way the scheduler's Ray job would run them)."""

from __future__ import annotations

from studio.evals.gate import GateConfig, advance_after_training, gated_promote, promotion_history, set_gate
from studio.jobs.scheduler import reconcile_once
from studio.jobs.status import JobStatus, create_job, transition
from studio.registry.versions import get_version, register_version
from studio.store.db import session_scope
from studio.store.models import Job
from studio.train.spec import TrainSpec
from tests.evals.test_api_and_gate import claim_and_run


def succeeded_training_job(settings, name: str, model: str, after: dict | None) -> int:
    """A training job row as the training entrypoint leaves it: SUCCEEDED, ``result.model`` set."""
    spec = TrainSpec.model_validate({"name": name, "method": "sft", "base_model": "/models/tiny",
                                     "data": {"dataset": "rev-train"}, "after_training": after})
    with session_scope(settings.db_url) as s:
        job = create_job(s, name=name, spec=spec.model_dump(mode="json", by_alias=True), max_retries=0,
                         submitted_by="test")
        for to in (JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CHECKPOINTING):
            transition(s, job.id, to, "test: as the training entrypoint")
        job.result = {"model": model, "uri": "file:///x", "metrics": {}}
        transition(s, job.id, JobStatus.SUCCEEDED, f"registered {model}")
        return job.id


def after(settings, job_id: int) -> dict:
    with session_scope(settings.db_url) as s:
        return dict(s.get(Job, job_id).result.get("after_training") or {})


def test_after_training_auto_eval_and_auto_promotion(settings, gateway, reverse_data):
    with session_scope(settings.db_url) as s:
        for _ in range(3):  # served by the gateway as: rev@1 bad, rev@2 good, rev@3 bad
            register_version(s, name="rev", base_model="tiny", method="sft", adapter_type="lora", uri="file:///x")
        register_version(s, name="solo", base_model="tiny", method="sft", adapter_type="lora", uri="file:///x")
        assert gated_promote(s, "rev@1", by="t").outcome == "promoted"  # the champion to beat
        set_gate(s, "rev", GateConfig(dataset=reverse_data, limit=6, generation={"max_tokens": 16}))
    promote = succeeded_training_job(settings, "rev", "rev@2", {"promote": True, "scorer": {"type": "exact_match"}})
    only_eval = succeeded_training_job(settings, "rev", "rev@3", {"limit": 4})
    no_gate = succeeded_training_job(settings, "solo", "solo@1", {"promote": True})
    untouched = succeeded_training_job(settings, "rev", "rev@3", None)
    no_data = succeeded_training_job(settings, "rev", "rev@3", {"promote": True, "dataset": "no-such-data"})

    # Without the hook (the JobScheduler deployment hands it in) a pass leaves after_training alone.
    assert reconcile_once(settings, None).after_training == [] and after(settings, promote) == {}
    # Nothing on Ray to submit or poll: the client is not used.
    report = reconcile_once(settings, None, after_training=advance_after_training)
    assert report.errors == [] and report.after_training == [promote, only_eval, no_gate, no_data]
    p, e = after(settings, promote), after(settings, only_eval)
    assert (p["done"], p["outcome"], e["done"], e["outcome"]) == (False, "evaluating", False, "evaluating")
    assert p["eval_id"] != e["eval_id"]
    skipped = after(settings, no_gate)
    assert skipped["done"] and skipped["outcome"] == "skipped" and "studio models gate solo" in skipped["reason"]
    assert after(settings, untouched) == {}
    refused = after(settings, no_data)  # refused for good, not asked again every pass
    assert refused["done"] and refused["outcome"] == "refused" and "no-such-data" in refused["reason"]
    with session_scope(settings.db_url) as s:
        assert get_version(s, "rev").version == 1  # nothing promoted before the eval is done
        evals = {i: s.get(Job, i) for i in (p["eval_id"], e["eval_id"])}
        assert {i: (j.status, j.spec["models"]) for i, j in evals.items()} == {
            p["eval_id"]: ("QUEUED", ["rev@2", "rev@1"]), e["eval_id"]: ("QUEUED", ["rev@3", "rev@1"])}

    # The next pass would submit the evals as Ray jobs; run them here as that job does.
    for eval_id in (p["eval_id"], e["eval_id"]):
        claim_and_run(settings, gateway, eval_id)
    report = reconcile_once(settings, None, after_training=advance_after_training)
    assert report.errors == [] and report.after_training == [promote, only_eval]
    p, e = after(settings, promote), after(settings, only_eval)
    assert (p["done"], p["outcome"], p["candidate_score"], p["champion_score"]) == (True, "promoted", 1.0, 0.0)
    assert (e["done"], e["outcome"], e["means"]) == (True, "evaluated", {"rev@3": 0.0, "rev@1": 0.0})
    with session_scope(settings.db_url) as s:
        assert get_version(s, "rev").version == 2  # auto-promoted
        history = promotion_history(s, "rev")
    assert (history[-1]["version"], history[-1]["outcome"], history[-1]["by"]) == (2, "promoted", f"job:{promote}")
    assert reconcile_once(settings, None, after_training=advance_after_training).after_training == []  # done stays done


def test_the_scheduler_checks_model_names_with_what_it_is_given(settings, reverse_data, monkeypatch):
    """In Serve the scheduler holds no key: its pass takes ``models_available`` (the Gateway's
    handle) and never asks over HTTP; a name it does not list is refused, a listed one queued."""
    from tests.loopback import free_port

    for var in ("STUDIO_API_KEY", "STUDIO_ADMIN_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("STUDIO_GATEWAY_URL", f"http://127.0.0.1:{free_port()}/gateway/v1")  # nothing listens
    with session_scope(settings.db_url) as s:
        register_version(s, name="hv", base_model="tiny", method="sft", adapter_type="lora", uri="file:///x")
        register_version(s, name="hv", base_model="tiny", method="sft", adapter_type="lora", uri="file:///x")
        register_version(s, name="other", base_model="tiny", method="sft", adapter_type="lora", uri="file:///x")
    served = succeeded_training_job(settings, "hv", "hv@2", {"dataset": reverse_data, "limit": 2})
    unknown = succeeded_training_job(settings, "other", "other@1", {"dataset": reverse_data, "limit": 2})
    asked = []

    def models_available() -> list[str]:
        asked.append(1)
        return ["hv"]

    report = reconcile_once(settings, None, models_available=models_available,
                            after_training=advance_after_training)  # one pass: nothing submitted
    assert asked and report.after_training[0] == served
    state = after(settings, served)
    assert state["outcome"] == "evaluating" and state["eval_id"]
    with session_scope(settings.db_url) as s:
        assert s.get(Job, state["eval_id"]).spec["models"] == ["hv@2"]
    refused = after(settings, unknown)
    assert "the gateway serves no model named 'other@1'" in refused.get("reason", "") + " ".join(report.errors), \
        (refused, report.errors)
