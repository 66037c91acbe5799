"""lm-evaluation-harness as an eval kind (``scorers: [{type: lm_eval, task: ...}]``): the spec's rules,
a task name lm-eval does not know refused with the closest names, and a run of the shipped
``reverse_tiny`` task (configs/eval/tasks/) through the real gateway to the scripted provider
(``good`` reverses, ``bad`` echoes): every document a leaderboard row of the job's, every call a
usage row of the job's key, the task's progress in the run's events, and the promotion gate
deciding on the task's metric. The tiny model on vLLM runs it in tests/evals/test_eval_e2e.py."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError

from studio.errors import NotFound, StudioError
from studio.evals.gate import GateConfig, gated_promote, set_gate
from studio.evals.harness import DOCS_PER_SCORER, check_tasks
from studio.evals.run import run_job
from studio.evals.spec import EvalSpec
from studio.evals.views import follow_eval
from studio.jobs.status import JobStatus, transition
from studio.registry.versions import register_version
from studio.store.db import session_scope
from studio.store.models import Job
from tests.api.checks import assert_problem
from tests.evals.test_api_and_gate import claim_and_run
from tests.evals.test_lane import usage_rows

TASK = {"type": "lm_eval", "task": "reverse_tiny"}


def run_as_the_job(settings, eval_id: int) -> None:
    """As the scheduler and the entrypoint do: STARTING, then run_job with the job's own gateway client
    (STUDIO_GATEWAY_URL and STUDIO_API_KEY from the ``gateway`` fixture, the job's id as its tag)."""
    with session_scope(settings.db_url) as s:
        transition(s, eval_id, JobStatus.STARTING, "test: as the scheduler")
        s.get(Job, eval_id).attempts = 1
    assert run_job(settings, eval_id) == 0


def test_the_spec_of_an_lm_eval_run():
    spec = EvalSpec.model_validate({"models": ["m"], "scorers": [TASK]})
    assert spec.dataset is None and spec.scorers[0].model_type == "local-chat-completions"
    with pytest.raises(ValidationError, match="reads its task's own documents .* queue them as two evals"):
        EvalSpec.model_validate({"dataset": "d", "models": ["m"], "scorers": [TASK, {"type": "exact_match"}]})
    with pytest.raises(ValidationError, match="dataset is required"):
        EvalSpec.model_validate({"models": ["m"], "scorers": [{"type": "exact_match"}]})
    with pytest.raises(ValidationError, match="task"):  # a name, never a path on the server
        EvalSpec.model_validate({"models": ["m"], "scorers": [{**TASK, "task": "../etc/tasks.yaml"}]})
    two = EvalSpec.model_validate({"models": ["m"], "scorers": [TASK, {**TASK, "task": "gsm8k"}]})
    assert [s.name or s.task for s in two.scorers] == ["reverse_tiny", "gsm8k"]  # each keyed by its task


def test_an_unknown_task_is_refused_with_the_closest_names():
    def spec(task: str) -> EvalSpec:
        return EvalSpec.model_validate({"models": ["m"], "scorers": [{**TASK, "task": task}]})

    check_tasks(spec("reverse_tiny"))  # the studio's own (configs/eval/tasks/)
    check_tasks(spec("gsm8k"))  # lm-eval's
    with pytest.raises(NotFound) as e:
        check_tasks(spec("revers_tiny"))
    assert "no task named 'revers_tiny'" in e.value.problem and "did you mean reverse_tiny" in e.value.fix
    with pytest.raises(NotFound) as e:
        check_tasks(spec("gsm8kk"))
    assert "gsm8k" in e.value.fix
    with pytest.raises(StudioError, match="multiple_choice task, which needs the prompt's token log-probabilities"):
        check_tasks(spec("hellaswag"))


def test_an_lm_eval_run_lands_in_the_leaderboard(settings, gateway):
    api = httpx.Client(base_url=gateway.api_url, headers=gateway.headers(), timeout=60)
    body = {"name": "harness", "models": ["good", "bad"], "limit": 6, "concurrency": 4, "scorers": [TASK]}
    problem = assert_problem(api.post("/api/evals", json={**body, "scorers": [{**TASK, "task": "reverse_tinyy"}]}),
                             404, "no task named 'reverse_tinyy'")
    assert "did you mean reverse_tiny" in json.dumps(problem)
    r = api.post("/api/evals", json=body)
    assert r.status_code == 201, r.text
    eval_id = r.json()["id"]
    assert r.json()["dataset"] is None and r.json()["progress"]["total"] == 12

    run_as_the_job(settings, eval_id)
    d = api.get(f"/api/evals/{eval_id}").json()
    assert d["status"] == "SUCCEEDED", (d["error"], d["events"])
    means = {(x["model"], x["scorer"]): (x["mean"], x["n"]) for x in d["leaderboard"]["scores"]}
    assert means == {("good", "reverse_tiny"): (1.0, 6), ("bad", "reverse_tiny"): (0.0, 6)}
    assert d["progress"]["done"] == 12
    tasks = d["result"]["lm_eval"]
    assert [(t["task"], t["model"], t["docs"]) for t in tasks] == [("reverse_tiny", "good", 6),
                                                                    ("reverse_tiny", "bad", 6)]
    assert tasks[0]["results"]["reverse_tiny"]["exact_match,none"] == 1.0  # lm-eval's own aggregate

    rows = api.get(f"/api/evals/{eval_id}/results", params={"model": "good"}).json()["results"]
    first = rows[0]
    assert first["input"] == [{"role": "user", "content": "reverse: 6 1 2"}]  # the task's first document
    assert (first["output"], first["reference"]) == ("2 1 6", "2 1 6")
    assert first["scores"]["reverse_tiny"]["score"] == 1.0 and first["datapoint"] < DOCS_PER_SCORER

    kinds = [(e.kind, e.data.get("task")) for e in follow_eval(settings.db_url, eval_id)]
    assert kinds.count(("task", "reverse_tiny")) == 2 and kinds[-1][0] == "end"
    # every call of lm-eval went through the gateway as the job's: a usage row of the job's key
    calls = usage_rows(settings.db_url, f"eval-{eval_id}", 12)
    assert len(calls) == 12 and {(u.service, u.key_name) for u in calls} == {("eval", "eval-tests")}


def test_the_gate_decides_on_an_lm_eval_metric(settings, gateway, reverse_data):
    with session_scope(settings.db_url) as s:
        for _ in range(2):  # served by the gateway as: rev@1 bad, rev@2 good
            register_version(s, name="rev", base_model="tiny", method="sft", adapter_type="lora", uri="file:///x")
        assert gated_promote(s, "rev@1", by="t").outcome == "promoted"
        set_gate(s, "rev", GateConfig(dataset=reverse_data, scorer=TASK, margin=0.1, limit=5))
    with session_scope(settings.db_url) as s:
        o = gated_promote(s, "rev@2", by="t")
        assert o.outcome == "evaluating", o.reason
    claim_and_run(settings, gateway, o.eval_id)
    with session_scope(settings.db_url) as s:
        o = gated_promote(s, "rev@2", by="t")
    assert (o.outcome, o.candidate_score, o.champion_score) == ("promoted", 1.0, 0.0), o.reason
    assert "reverse_tiny 1.000 vs champion rev@1 0.000" in o.reason
