"""Evaluation in a live studio (`studio up` serving the tiny model on vLLM, the gateway, the
scheduler): `studio eval run` queues the tiny base vs an SFT adapter on digit reversal, the
scheduler runs it as a Ray job, GET /api/evals/{id} shows the leaderboard growing while it runs,
the adapter wins by exact match, the judge (the tiny model itself: its scores are noise, the path is
what is tested) scores or marks every answer. Then the promotion gate: a better candidate is
promoted, a worse one refused, --force recorded, and a version whose folder carries a wrong chat
template refused by the train/serve parity check (its first differing prompt recorded).

Adapters: the "good" one is the SFT adapter the demo's run trained (``demo_run``, once per session:
configs/train/sft_reverse_tiny.yaml at 6 epochs, 192 steps, ≥ 0.9 held-out exact match, checked by
tests/e2e/test_demo.py; its base is the same deterministic tiny model the stack serves), the "bad"
one is random LoRA weights; both are registered the way a training job registers its result (with
the PEFT answers the gate's parity check compares /v1 with, so the gate's CLI loads no model for
them); the wrong-template copy is registered by hand, without them (the gate's local check)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.e2e.test_stack import run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_stack, demo_run):
    from studio.data.ingest import ingest_file
    from studio.data.snapshots import resolve_snapshot
    from studio.train.parity import training_record
    from studio.train.toy_data import write_reversal_files
    from studio.registry.versions import register_version
    from studio.settings import StudioSettings
    from studio.store.db import init_db, session_scope
    from tests.deployments.conftest import make_adapter

    # The demo's run starts the shared stack (its step 0) and leaves it up for this module and the
    # others that share it (tests/stacks.py); the names here are this module's own.
    work = tmp_path_factory.mktemp("evals-work")
    model = tiny_stack.tiny_model()  # the model the stack will serve: the demo's base, bit for bit
    good = demo_run.version_uri(demo_run.result.sft_version)
    bad = make_adapter(model, work / "adapters" / "bad", seed=5)
    stack = tiny_stack.ensure()
    home = stack.home

    settings = StudioSettings(home=home, database_url=None, artifacts_uri=None, mlflow_uri=None, redis_url=None,
                              admin_key=None)
    init_db(settings.db_url)
    train, test = write_reversal_files(work / "data", n_train=10, n_test=60)
    ingest_file(test, "eval-e2e-reverse-test", settings)
    ingest_file(train, "eval-e2e-reverse-train", settings)
    wrong = wrong_template_copy(good, work / "adapters" / "wrong-template", model)
    with session_scope(settings.db_url) as s:
        snap = resolve_snapshot(s, "eval-e2e-reverse-train").snapshot
        # rev@1 bad, rev@2 good, rev@3 bad: registered as a training job registers its result, with
        # the PEFT answers to its snapshot's parity prompts (studio.train.parity); rev@4, the good
        # adapter's folder copied with a wrong chat template, without: the gate loads its folder.
        for uri in (bad, good, bad):
            register_version(s, name="rev", base_model=str(model), method="sft", adapter_type="lora",
                             uri=str(uri), dataset_snapshot_id=snap.id,
                             parity=training_record(snap.uri, snap.id, str(model), uri, job_id=0))
        register_version(s, name="rev", base_model=str(model), method="sft", adapter_type="lora", uri=str(wrong))
    auth = {"Authorization": f"Bearer {stack.admin}"}
    yield {"env": stack.env, "home": work,
           "api": httpx.Client(base_url=stack.base, timeout=60, headers=auth)}


def wrong_template_copy(adapter, out, base):
    """The trained adapter's folder copied with a different chat template in its tokenizer files (what
    training saved next to it): PEFT renders prompts with it, the served base model with its own."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(adapter, out)
    tok = AutoTokenizer.from_pretrained(str(out if (out / "tokenizer_config.json").is_file() else base))
    tok.chat_template = ("{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'reversed:' }}{% endif %}")
    tok.save_pretrained(str(out))
    return out


def test_adapter_beats_base_and_the_leaderboard_is_live(studio):
    spec = studio["home"] / "eval.yaml"
    spec.write_text(
        "# studio eval run eval.yaml\nname: e2e\ndataset: eval-e2e-reverse-test\nmodels: [tiny, rev@2]\n"
        "generation: {max_tokens: 16}\nconcurrency: 8\nscorers:\n  - type: exact_match\n"
        "  - {type: judge, model: tiny, max_tokens: 8}\n")
    r = run(["eval", "run", str(spec)], studio["env"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    queued = re.search(r"eval (\d+): tiny, rev@2 on eval-e2e-reverse-test", r.stdout)
    assert queued, r.stdout
    eval_id = int(queued.group(1))  # the stack is shared: ids are whatever this run was given
    api = studio["api"]
    seen, deadline = [], time.monotonic() + 400
    while time.monotonic() < deadline:
        d = api.get(f"/api/evals/{eval_id}").raise_for_status().json()
        seen.append((d["status"], d["progress"]["done"], len(d["leaderboard"]["scores"])))
        if d["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(0.3)
    assert d["status"] == "SUCCEEDED", (d["error"], d["events"])
    # the leaderboard had rows while the run was still going
    assert any(status == "RUNNING" and 0 < done < 120 and rows > 0 for status, done, rows in seen), seen
    means = {(x["model"], x["scorer"]): x for x in d["leaderboard"]["scores"]}
    em = {m: means[(m, "exact_match")]["mean"] for m in ("tiny", "rev@2")}
    print(f"exact match: {em}")  # the quick adapter is short-trained: it wins, it need not be perfect
    assert em["rev@2"] >= em["tiny"] + 0.2, em
    judge = [means[(m, "judge")] for m in ("tiny", "rev@2")]
    assert all(j["n"] + j["unscored"] == 60 for j in judge)  # every answer judged or kept unscored
    win = next(w for w in d["leaderboard"]["win_rates"]
               if (w["scorer"], w["model"], w["opponent"]) == ("exact_match", "rev@2", "tiny"))
    assert win["win_rate"] > 0.5
    assert any(e["to"] == "STARTING" and f"studio-job-{eval_id}-a1" in e["reason"]
               for e in d["events"])  # a Ray job

    r = run(["eval", "show", str(eval_id), "--results", "2"], studio["env"])
    assert r.returncode == 0 and "rev@2" in r.stdout and "exact_match" in r.stdout


def test_an_lm_eval_task_lands_in_the_leaderboard(studio):
    """lm-evaluation-harness as a scheduled Ray job: the shipped reverse_tiny task (configs/eval/tasks/)
    asked of the base and the trained adapter as lm-eval's local-chat-completions model through the
    studio's gateway, as the submitter's job: the adapter scores, per task progress is recorded."""
    spec = studio["home"] / "lm_eval.yaml"
    spec.write_text("# studio eval run lm_eval.yaml\nname: e2e-lm-eval\nmodels: [tiny, rev@2]\nlimit: 24\n"
                    "concurrency: 8\nscorers:\n  - {type: lm_eval, task: reverse_tiny}\n")
    r = run(["eval", "run", str(spec)], studio["env"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    queued = re.search(r"eval (\d+): tiny, rev@2 on lm-eval reverse_tiny", r.stdout)
    assert queued, r.stdout
    eval_id = int(queued.group(1))
    api, deadline = studio["api"], time.monotonic() + 300
    while time.monotonic() < deadline:
        d = api.get(f"/api/evals/{eval_id}").raise_for_status().json()
        if d["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(0.5)
    assert d["status"] == "SUCCEEDED", (d["error"], d["events"])
    assert any(e["to"] == "STARTING" and f"studio-job-{eval_id}-a1" in e["reason"] for e in d["events"])  # a Ray job
    means = {(x["model"], x["scorer"]): x for x in d["leaderboard"]["scores"]}
    em = {m: means[(m, "reverse_tiny")]["mean"] for m in ("tiny", "rev@2")}
    print(f"lm-eval reverse_tiny exact match: {em}")
    assert means[("rev@2", "reverse_tiny")]["n"] == 24 and em["rev@2"] > 0 and em["rev@2"] > em["tiny"], em
    assert [(t["model"], t["docs"]) for t in d["result"]["lm_eval"]] == [("tiny", 24), ("rev@2", 24)]
    deadline = time.monotonic() + 30  # the gateway writes usage rows off the call path
    while True:
        usage = api.get("/api/usage", params={"job": f"eval-{eval_id}", "group_by": "service"}).json()["rows"]
        if sum(u["calls"] for u in usage) >= 48 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [(u["service"], u["calls"]) for u in usage] == [("eval", 48)], usage  # the job's calls, accounted


def test_promotion_gate_refuses_worse_and_promotes_better(studio):
    env = studio["env"]
    r = run(["models", "gate", "rev", "--dataset", "eval-e2e-reverse-test", "--limit", "30", "--max-tokens", "16"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(["models", "promote", "rev@1"], env)
    assert r.returncode == 0 and "no champion yet" in r.stdout, r.stdout + r.stderr
    r = run(["models", "promote", "rev@2"], env, timeout=400)
    assert r.returncode == 0 and "promoted: beats" in r.stdout, r.stdout + r.stderr
    r = run(["models", "promote", "rev@3"], env, timeout=400)
    assert r.returncode == 1 and "was not promoted" in r.stdout, r.stdout + r.stderr
    assert studio["api"].get("/api/models/rev").json()["versions"][1]["stage"] == "champion"
    r = run(["models", "promote", "rev@3", "--force"], env)
    assert r.returncode == 0 and "forced" in r.stdout, r.stdout + r.stderr
    # train/serve parity, checked once per version: the good versions pass; rev@4 (the good adapter
    # with a wrong chat template in its folder) answers differently through PEFT than served: refused
    r = run(["models", "promote", "rev@4"], env, timeout=400)
    assert r.returncode == 1 and "was not promoted" in r.stdout and "parity" in r.stdout, r.stdout + r.stderr
    versions = studio["api"].get("/api/models/rev").json()["versions"]
    assert [v["parity"]["status"] for v in versions] == ["ok", "ok", "ok", "mismatch"], versions
    assert [v["parity"]["peft_by"] for v in versions] == ["job 0", "job 0", "job 0", "gate"], versions
    first = versions[3]["parity"]["first_mismatch"]
    assert first["prompt"].startswith("reverse: ") and first["peft"] != first["served"]
    history = studio["api"].get("/api/models/rev/promotions").json()
    assert [(h["version"], h["outcome"]) for h in history] == [(1, "promoted"), (2, "promoted"), (3, "refused"),
                                                               (3, "forced"), (4, "refused")]
    assert "parity check failed" in history[4]["reason"] and repr(first["prompt"]) in history[4]["reason"]
    assert "parity ok" in history[1]["reason"]
