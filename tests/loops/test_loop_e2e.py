"""The self-driving loop end to end (issue 23) on the state the e2e demo leaves, on the suite's
shared tiny-model stack (tests/stacks.py; the demo's run is tests/demo_run.py): two generations
with simulated users (``studio.loops.simulate``) through the functions of the demo's last step
(``studio.cli.demo.loop_step``), each surviving a ``studio down`` / ``studio up`` in the middle of
its canary.

- **PROMOTED**: a clearly better candidate. The served name ``reverse-weak``'s champion is the demo's
  SFT adapter with its LoRA B scaled down until exact match falls to ≤ 0.5 (``@1``); ``@2`` is the
  adapter itself. Simulated users of an A/B alias of the two rate their answers; the loop trains SFT
  (configs/train/sft_reverse_tiny.yaml, a few dozen steps) from the weak champion on the answers they
  gave a thumbs up (mostly right ones), the gate (exact match on reverse-test) passes it, and the
  canary promotes it.
- **ROLLED_BACK**: a deliberately broken candidate. The shipped loop on ``reverse-tiny`` with a DPO
  learning rate 100× the recipe's destroys the reversal skill; a gate that checks the wrong thing
  (a regex that only asks for an answer that is not a bare digit string) lets it through, and the
  canary rolls it back on the users' thumbs down (or a guardrail).

Both generations run at once (two loops, two served names), so the run pays one restart and one
wait for training and gates. The restart comes when both are in CANARY, before any user rated:
the generations resume from their stored state, no second training job is queued, the split's
weights are the same rows (set absolutely), and the verdicts come after the restart.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from studio.store.db import session_scope

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WEAK = "reverse-weak"
WEAK_AB = "reverse-weak-ab"
# Every generation here: no pause for missing traffic while the other trains and the stack restarts, and a
# deadline (keep the champion) that a clear verdict never reaches but that bounds a wrong run.
# ... and started by hand only (the users' ratings would fire the data trigger on their own).
PATIENT = ("decision.no_traffic_s=600", "decision.no_feedback_s=660", "decision.deadline_s=900",
           "trigger.min_new_rated=null", "trigger.drift_margin=null")
BROKEN = ('train.overrides=["hyper.max_steps=8", "hyper.batch_size=8", "hyper.logging_steps=2", '
          '"hyper.learning_rate=0.02"]',
          # The wrong check: 1 for an answer that is not a list of 3-5 single digits (the task's shape),
          # so the champion's answers score 0 and a broken model's malformed text more.
          r"""gate.scorer={"type": "regex", "pattern": '\A(?!\s*\d( \d){2,4}\s*\Z)'}""", "gate.limit=40",
          "gate.guards=[]",  # the shipped format guard would refuse it at the gate; this test is about the canary
          *PATIENT)
BETTER = ("name=reverse-weak-loop", f"served_name={WEAK}", "train.recipe=configs/train/sft_reverse_tiny.yaml",
          # SFT on the thumbs-up answers from the weak champion: it knows the task at a smaller scale, so a
          # few dozen steps on ~60 rows restore it (the recipe's own 192 steps learn it from scratch); one
          # worker (2 cores, an engine beside it), no eval_after (the gate measures it).
          'train.overrides=["hyper.max_steps=48", "hyper.batch_size=16", "hyper.logging_steps=8", '
          '"resources.num_workers=1", "eval_after=null"]', "gate.limit=40", "gate.guards=[]", "train.replay_share=0",
          # The weak champion's answers often end early, so the candidate's right ones are longer and
          # slower; on a shared 2-core box a p95 latency is noisy too. The guardrails here stop only
          # gross harm: this test is about the thumbs-up rate.
          "decision.guardrails.max_tokens_ratio=10", "decision.guardrails.max_latency_p95_ratio=10", *PATIENT)


def _scaled_adapter(src: Path, dst: Path, scale: float) -> Path:
    """A copy of the LoRA adapter at ``src`` with every lora_B matrix times ``scale``: the same
    skill, weaker."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    weights = load_file(str(src / "adapter_model.safetensors"))
    save_file({k: (v * scale if "lora_B" in k else v) for k, v in weights.items()}, str(dst / "adapter_model.safetensors"))
    return dst


def _generation(api: httpx.Client, name: str, number: int) -> dict:
    r = api.get(f"/api/loops/{name}/generations/{number}")
    assert r.status_code == 200, r.text
    return r.json()


def _wait_for(api: httpx.Client, gens: dict[str, int], states: set[str], timeout_s: float = 900.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        docs = {name: _generation(api, name, n) for name, n in gens.items()}
        if all(d["state"] in states for d in docs.values()):
            return docs
        ended = {n: d for n, d in docs.items() if d["state"] in ("PROMOTED", "ROLLED_BACK", "REFUSED", "FAILED",
                                                                 "CANCELLED", "PAUSED")}
        assert not ended, {n: [(t["to_state"], t["detail"]) for t in d["transitions"]] for n, d in ended.items()}
        assert time.monotonic() < deadline, {n: d["state"] for n, d in docs.items()}
        time.sleep(2.0)


def _train_jobs(settings, loop: str, number: int) -> list[tuple[int, str, str]]:
    from studio.store.models import Job

    with session_scope(settings.db_url) as s:
        return [(j.id, j.submitted_by, j.status) for j in s.scalars(
            select(Job).where(Job.kind == "train", Job.submitted_by.contains(f"loop:{loop}:g{number}:"))
            .order_by(Job.id)).all()]


def _arms(settings, alias: str):
    from studio.store.models import Experiment

    with session_scope(settings.db_url) as s:
        exp = s.scalars(select(Experiment).where(Experiment.alias == alias)).first()
        return None if exp is None else (exp.id, exp.status, {a["model"]: float(a["weight"]) for a in exp.arms})


@pytest.fixture(scope="module")
def loop_runs(demo_run, tiny_stack):
    from studio.cli.demo import loop_step
    from studio.data.snapshots import load_split, resolve_snapshot
    from studio.registry.versions import get_version, promote, register_version
    from studio.loops.simulate import SimulateSpec, run_users
    from studio.train.evaluate import exact_match
    from tests.e2e.test_stack import REPO, STUDIO, run
    from tests.stacks import UNSET

    tiny_stack.ensure()
    settings, home = demo_run.settings, demo_run.home
    admin = tiny_stack.admin
    api = httpx.Client(base_url=tiny_stack.base, headers={"Authorization": f"Bearer {admin}"}, timeout=120)
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    # The weak champion: the SFT adapter scaled down until exact match is at most 0.5.
    with session_scope(settings.db_url) as s:
        sft = get_version(s, "reverse-tiny@1")
        base_model, sft_uri = sft.base_model, Path(sft.uri)
        test_rows = load_split(resolve_snapshot(s, "reverse-test").snapshot.uri).to_pylist()
    for scale in (0.7, 0.55, 0.45, 0.35, 0.25, 0.15):  # the largest scale that is weak enough
        weak_dir = _scaled_adapter(sft_uri, home / "models" / f"reverse-weak-{scale}", scale)
        weak_em = exact_match(base_model, str(weak_dir), test_rows, limit=30)["exact_match"]
        print(f"LoRA B x {scale}: exact match {weak_em:.2f}")
        if weak_em <= 0.5:
            break
    assert weak_em <= 0.5
    with session_scope(settings.db_url) as s:
        for uri in (weak_dir, sft_uri):
            register_version(s, name=WEAK, base_model=base_model, method="sft", adapter_type="lora", uri=str(uri))
        promote(s, f"{WEAK}@1", "champion")
    timings["weak champion"] = time.monotonic() - t0

    # Its users' first feedback: the weak and the strong version side by side.
    r = api.post("/api/experiments", json={"alias": WEAK_AB, "arms": [{"model": f"{WEAK}@1", "weight": 0.5},
                                                                       {"model": f"{WEAK}@2", "weight": 0.5}]})
    assert r.status_code in (200, 201), r.text
    deadline = time.monotonic() + 60  # the Router reads experiments through a short cache
    while api.post("/v1/chat/completions", json={"model": WEAK_AB, "max_tokens": 1, "messages": [
            {"role": "user", "content": "reverse: 1 2 3"}]}).status_code == 404:
        assert time.monotonic() < deadline, f"/v1 does not know {WEAK_AB} a minute after it was created"
        time.sleep(0.5)
    # Distinct prompts (the SFT candidate learns the task from its answers, not a few prompts by heart).
    first = run_users(settings, SimulateSpec(target=WEAK_AB, dataset="reverse-train", rate=1.0,
                                             requests=96, users=40, seed=1), api_key=admin, timeout_s=300)
    assert first.rated >= 60, first.as_dict()
    assert api.post(f"/api/experiments/{WEAK_AB}/stop").status_code == 200
    timings["first feedback"] = time.monotonic() - t0

    with pytest.MonkeyPatch.context() as mp:  # the recipes' ${STUDIO_HOME} is the stack's
        for var in UNSET:
            mp.delenv(var, raising=False)
        for k, v in tiny_stack.env.items():
            mp.setenv(k, v)
        broken = loop_step.create_loop(api, settings, overrides=BROKEN)
        better = loop_step.create_loop(api, settings, overrides=BETTER)
    champions = {broken: api.get("/api/models/reverse-tiny").json(), better: None}
    # The shipped loop's generation is started with issue 23's "done when" command, which follows
    # it (reading the database, so it outlives the restart) until its verdict.
    follow = subprocess.Popen([STUDIO, "loop", "run", broken, "--follow", "--timeout-s", "1500"], env=tiny_stack.env,
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        gens = {better: loop_step.trigger(api, better)}
        deadline = time.monotonic() + 60
        while not (active := api.get(f"/api/loops/{broken}").json().get("active_generation")):
            assert follow.poll() is None and time.monotonic() < deadline, follow.stdout.read() if follow.stdout else ""
            time.sleep(0.5)
        gens = {broken: active["number"], **gens}

        in_canary = _wait_for(api, gens, {"CANARY"})
        timings["both in canary"] = time.monotonic() - t0
        before = {n: {"jobs": _train_jobs(settings, n, gens[n]), "arms": _arms(settings, d["canary_alias"]),
                      "transitions": len(d["transitions"])} for n, d in in_canary.items()}

        # The restart, in the middle of both canaries.
        for cmd in (["down"], ["up", "--config", str(tiny_stack.config)]):
            r = run(cmd, tiny_stack.env, timeout=600)
            assert r.returncode == 0, r.stdout + r.stderr
        timings["down/up"] = time.monotonic() - t0
        after_up = {n: _generation(api, n, gens[n]) for n in gens}
        for n, d in after_up.items():
            before[n]["arms_after_up"] = _arms(settings, d["canary_alias"])

        with ThreadPoolExecutor(2) as pool:
            users = dict(zip(gens, pool.map(lambda n: loop_step.users_until_verdict(
                settings, admin, n, gens[n], rate=1.0, seed=2, timeout_s=600, users=60), gens)))
        docs = {n: loop_step.timeline(api, n, gens[n]) for n in gens}
        followed = follow.communicate(timeout=120)[0]
        print(followed)
        timings["verdicts"] = time.monotonic() - t0
        print("loop e2e timings (s since start): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
        yield {"api": api, "settings": settings, "gens": gens, "docs": docs, "before": before, "after_up": after_up,
               "users": users, "broken": broken, "better": better, "champions": champions, "weak_em": weak_em,
               "followed": (follow.returncode, followed)}
    finally:
        if follow.poll() is None:  # the fixture failed before the verdict: leave no follower behind
            follow.kill()
            follow.wait()
    api.close()


def _survived_the_restart(runs: dict, name: str) -> None:
    """The generation went on from its stored state: CANARY after the restart with the moves it had,
    the same single training job, the split's experiment row and weights untouched (set
    absolutely: the runner's repeat changed nothing), and the verdict came after."""
    settings, number = runs["settings"], runs["gens"][name]
    before, after_up, doc = runs["before"][name], runs["after_up"][name], runs["docs"][name]
    assert after_up["state"] == "CANARY"
    assert len(after_up["transitions"]) == before["transitions"]
    jobs = _train_jobs(settings, name, number)
    assert jobs == [(before["jobs"][0][0], before["jobs"][0][1], "SUCCEEDED")], jobs
    exp_id, status, arms = before["arms"]
    assert status == "active" and arms == {doc["champion"]: 75.0, doc["candidate"]: 25.0}
    assert before["arms_after_up"] == before["arms"]  # the same experiment row, the same weights
    moves = [(t["from_state"], t["to_state"]) for t in doc["transitions"]]
    assert moves.count(("TRAINING", "GATE")) == 1 and moves.count(("GATE", "CANARY")) == 1
    assert doc["looks"], "the canary decided on stored looks"
    assert _arms(settings, doc["canary_alias"]) is None  # the split ended with the generation


def test_a_clearly_better_candidate_is_promoted(loop_runs):
    name = loop_runs["better"]
    doc, users = loop_runs["docs"][name], loop_runs["users"][name]
    print(f"weak champion exact match {loop_runs['weak_em']:.2f}; users: {users.line()}")
    assert doc["state"] == "PROMOTED", [(t["to_state"], t["reason"], t["detail"]) for t in doc["transitions"]]
    _survived_the_restart(loop_runs, name)
    assert doc["champion"] == f"{WEAK}@1" and doc["candidate"] == f"{WEAK}@3"
    verdict = [t for t in doc["transitions"] if t["to_state"] == "PROMOTING"][-1]
    assert verdict["reason"] == "verdict_promote" and verdict["actor"] == "scheduler"
    last = doc["looks"][-1]
    assert last["action"] == "promote" and last["lower"] > 0
    model = loop_runs["api"].get(f"/api/models/{WEAK}").json()
    champion = [v for v in model["versions"] if v["stage"] == "champion"]
    assert [v["version"] for v in champion] == [3]
    explained = loop_runs["api"].get(f"/api/loops/{name}/generations/{loop_runs['gens'][name]}/explain").json()
    assert explained["all_agree"]


def test_a_broken_candidate_is_rolled_back(loop_runs):
    name = loop_runs["broken"]
    doc, users = loop_runs["docs"][name], loop_runs["users"][name]
    print(f"users: {users.line()}")
    assert doc["state"] == "ROLLED_BACK", [(t["to_state"], t["reason"], t["detail"]) for t in doc["transitions"]]
    _survived_the_restart(loop_runs, name)
    # `studio loop run reverse-tiny-loop --follow` printed the timeline through the restart to the verdict.
    code, followed = loop_runs["followed"]
    assert code == 0 and f"generation {doc['number']}: ROLLED_BACK" in followed, followed
    assert "CANARY" in followed and "look: step" in followed
    rollback = [t for t in doc["transitions"] if t["to_state"] == "ROLLING_BACK"][-1]
    assert rollback["reason"] in ("verdict_rollback", "guardrail"), rollback
    model = loop_runs["api"].get("/api/models/reverse-tiny").json()
    stages = {f"reverse-tiny@{v['version']}": v["stage"] for v in model["versions"]}
    assert stages[doc["champion"]] == "champion" and stages[doc["candidate"]] == "archived"
    before = {f"reverse-tiny@{v['version']}": v["stage"] for v in loop_runs["champions"][name]["versions"]}
    assert [r for r, st in before.items() if st == "champion"] == [doc["champion"]]
    # The users saw it: the candidate answered, and worse than the champion.
    by = users.by_version
    assert by[doc["candidate"]][0] > 0 and by[doc["candidate"]][1] / by[doc["candidate"]][0] < 0.5
    print(json.dumps(users.as_dict()))
