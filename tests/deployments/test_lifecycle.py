"""Runtime model lifecycle (studio.serving): serving recipes, their states and rows, the live
figures per replica, and — slow, on one real stack — a second tiny base model (an adapter merged
into the first by ``studio.registry.merge``, answering like the adapter) deployed at runtime
through ``POST /api/deployments``, served next to the first with no failed request to the first
while it comes and goes, restarted (``studio serve restart``: 503 + Retry-After, then serving again),
then evicted (its name answers 404 "not deployed"), plus the bad inputs:
a model path that does not exist, a name deployed twice, a deploy no node can hold (100000 GiB of
memory; 64 GiB of KV cache on CPU), one the cluster cannot hold now, an eviction with a request
in flight, and (light) evicting a model that serves an A/B arm."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from deployments.serving_metrics import ServingMetrics
from studio.errors import Conflict, StudioError
from studio.experiments.ab import (
    ExperimentSpec,
    ExperimentUpdate,
    create_experiment,
    stop_experiment,
    update_experiment,
)
from studio.registry.versions import register_version
from studio.serving import lifecycle
from studio.serving.status import describe
from studio.serving.recipe import (
    DeploymentStatus,
    ServingRecipe,
    claim,
    get_row,
    resolve_model_path,
    set_status,
)
from studio.store.db import session_scope

CHAT = [{"role": "user", "content": "reverse: 1 2 3"}]


def _recipe(model: str, name: str = "tiny2", **deployment) -> dict:
    return {"name": name, "deployment": {
        "engine": {"model": model, "dtype": "float32", "max_model_len": 512,
                   "kv_cache_space_gib": 1, "max_loras": 2, "seed": 0},
        "num_cpus": 0.5, **deployment}}


# ---- recipes, rows, figures (no Ray) ---------------------------------------------------------------
def test_recipe_serves_its_name_and_sums_the_resources_it_needs(tmp_path):
    r = ServingRecipe.model_validate(_recipe("org/model", num_gpus=0, memory_gib=3,
                                             autoscaling={"min_replicas": 2, "max_replicas": 4},
                                             resources={"serving": 1}))
    assert r.deployment.engine.name == "tiny2" and r.app_name == "model-tiny2"
    assert r.resources_needed() == {"CPU": 1.0, "memory": 6 * 2**30, "serving": 2}
    with pytest.raises(ValueError, match="differs from name"):
        ServingRecipe.model_validate({**_recipe("org/model"), "deployment": {
            "engine": {"model": "org/model", "served_model_name": "other"}}})
    with pytest.raises(ValueError, match="not a valid model name"):
        ServingRecipe.model_validate(_recipe("org/model", name="a b/c"))


def test_model_paths_must_exist_and_hold_a_model(tmp_path, tiny_model_dir):
    with pytest.raises(StudioError, match="model path '/no/such/dir' does not exist"):
        resolve_model_path(ServingRecipe.model_validate(_recipe("/no/such/dir")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudioError, match="not a model directory"):
        resolve_model_path(ServingRecipe.model_validate(_recipe(str(tmp_path / "empty"))))
    rel = os.path.relpath(tiny_model_dir, tiny_model_dir.parent.parent)
    got = resolve_model_path(ServingRecipe.model_validate(_recipe(rel)), tiny_model_dir.parent.parent)
    assert got.deployment.engine.model == str(tiny_model_dir.resolve())
    hub = ServingRecipe.model_validate(_recipe("org/model"))
    assert resolve_model_path(hub) == hub


def test_a_live_name_cannot_be_claimed_twice_and_states_follow_the_table(settings):
    recipe = ServingRecipe.model_validate(_recipe("org/model"))
    with session_scope(settings.db_url) as s:
        row = claim(s, recipe, "root")
        assert row.status == "deploying"
        with pytest.raises(Conflict, match="already deployed"):
            claim(s, recipe, "root")
        with pytest.raises(Conflict, match="from deploying to evicted"):
            set_status(row, DeploymentStatus.EVICTED)
        set_status(row, DeploymentStatus.FAILED, "no room")
        claim(s, recipe, "again")  # a failed name can be deployed again
        assert get_row(s, "tiny2").status == "deploying" and get_row(s, "tiny2").message is None


def test_cpu_memory_need_counts_the_kv_cache_and_weights_once(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 2**20)  # 1 MiB of weights

    def need(**kw):
        engine = {"model": str(model), "kv_cache_space_gib": kw.pop("kv", 1)}
        return ServingRecipe.model_validate({"name": "m", "deployment": {"engine": engine, **kw}})

    assert need(kv=64).replica_resources()["memory"] == 64 * 2**30 + 2**20
    # An explicit memory_gib is the replica's whole reservation, KV cache included: the larger
    # of the two counts, never their sum.
    assert need(kv=1, memory_gib=3).replica_resources()["memory"] == 3 * 2**30
    assert need(kv=64, memory_gib=3).replica_resources()["memory"] == 64 * 2**30 + 2**20
    assert need(kv=64, num_replicas=2).resources_needed()["memory"] == 2 * (64 * 2**30 + 2**20)
    # On GPU the KV cache is a share of GPU memory (gpu_memory_utilization): not host memory.
    assert "memory" not in need(kv=64, num_gpus=1).replica_resources()
    assert need(kv=64, num_gpus=1, memory_gib=8).replica_resources()["memory"] == 8 * 2**30


def test_64_gib_of_kv_cache_is_refused_on_this_machine_before_anything_starts(tmp_path, tiny_model_dir):
    """This machine as Ray sees it: one node with its CPUs and ~70% of its RAM as `memory`."""
    node = {"CPU": float(psutil.cpu_count()), "memory": psutil.virtual_memory().total * 0.7}
    big = resolve_model_path(ServingRecipe.model_validate({
        "name": "big", "evict_idle": True, "deployment": {
            "engine": {"model": str(tiny_model_dir), "kv_cache_space_gib": 64}, "num_cpus": 0.5}}))
    with pytest.raises(StudioError) as refused:
        lifecycle.refuse_what_no_node_holds(big, [node], {"memory": node["memory"] / 2})
    err = refused.value
    assert err.status_code == 400
    assert "engine.kv_cache_space_gib: 64 GiB" in err.problem, err.problem
    assert re.search(r"the largest node has [0-9.]+ GiB in all, [0-9.]+ GiB free now", err.problem)
    assert "nothing was started or evicted" in err.problem
    assert "lower engine.kv_cache_space_gib" in err.fix
    small = big.model_copy(update={"deployment": big.deployment.model_copy(update={
        "engine": big.deployment.engine.model_copy(update={"kv_cache_space_gib": 1})})})
    lifecycle.refuse_what_no_node_holds(small, [node], {"memory": node["memory"] / 2})
    # A second node changes nothing: one replica lives on one node.
    with pytest.raises(StudioError, match="no node of this cluster"):
        lifecycle.refuse_what_no_node_holds(big, [node, node], {})


def test_a_model_serving_an_ab_arm_is_not_evicted(settings, tmp_path, tiny_model_dir):
    recipe = resolve_model_path(ServingRecipe.model_validate(_recipe(str(tiny_model_dir))))
    with session_scope(settings.db_url) as s:
        set_status(claim(s, recipe, "root"), DeploymentStatus.READY)
        register_version(s, name="rev", base_model=str(tiny_model_dir), method="sft",
                         adapter_type="lora", uri="file:///nowhere")
        register_version(s, name="other", base_model="tiny", method="sft", adapter_type="lora",
                         uri="file:///nowhere")
        create_experiment(s, ExperimentSpec(alias="ab-base", arms=[
            {"model": "tiny2", "weight": 1}, {"model": "tiny", "weight": 1}]))
        create_experiment(s, ExperimentSpec(alias="ab-adapter", arms=[
            {"model": "rev@1", "weight": 1}, {"model": "other", "weight": 1}]))
        create_experiment(s, ExperimentSpec(alias="ab-elsewhere", arms=[
            {"model": "other", "weight": 1}, {"model": "tiny", "weight": 1}]))
    with pytest.raises(Conflict) as refused:
        lifecycle.evict(settings, "tiny2")
    err = refused.value
    assert err.status_code == 409
    assert "'ab-base' (arm 'tiny2')" in err.problem and "'ab-adapter' (arm 'rev@1')" in err.problem
    assert "ab-elsewhere" not in err.problem and "nothing was evicted" in err.problem
    assert "`studio experiments stop ab-base`" in err.fix
    with session_scope(settings.db_url) as s:
        assert get_row(s, "tiny2").status == "ready"

    # Through the CLI: refused before it looks for the cluster, exit code 1, the same words.
    env = {**os.environ, "STUDIO_HOME": str(settings.home), "STUDIO_DATABASE_URL": settings.db_url}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([str(Path(sys.executable).with_name("studio")), "serve", "evict", "tiny2"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    said = " ".join(r.stderr.split())
    assert "serves an arm of active experiment" in said and "'ab-base' (arm 'tiny2')" in said, said
    assert "fix: end the experiment first" in said and "studio experiments stop ab-base" in said

    with session_scope(settings.db_url) as s:
        stop_experiment(s, "ab-base")
        with pytest.raises(Conflict, match="'ab-adapter' \\(arm 'rev@1'\\)"):
            lifecycle.check_evictable(settings, "tiny2")
        update_experiment(s, "ab-adapter", ExperimentUpdate(arms=[{"model": "other", "weight": 1}]))
    lifecycle.check_evictable(settings, "tiny2")  # stopped, or no arm on it: evictable

    # Another deployment loading the same model (the stack walk's second base on the tiny model's
    # folder) serves rev@1 once tiny2 goes: only an arm naming tiny2 itself still holds it.
    with session_scope(settings.db_url) as s:
        update_experiment(s, "ab-adapter", ExperimentUpdate(arms=[{"model": "rev@1", "weight": 1},
                                                                  {"model": "other", "weight": 1}]))
    with pytest.raises(Conflict, match="'ab-adapter' \\(arm 'rev@1'\\)"):
        lifecycle.check_evictable(settings, "tiny2")
    with session_scope(settings.db_url) as s:
        twin = resolve_model_path(ServingRecipe.model_validate(_recipe(str(tiny_model_dir), name="tiny3")))
        set_status(claim(s, twin, "root"), DeploymentStatus.READY)
    lifecycle.check_evictable(settings, "tiny2")
    with session_scope(settings.db_url) as s:
        create_experiment(s, ExperimentSpec(alias="ab-named", arms=[
            {"model": "tiny2", "weight": 1}, {"model": "tiny3", "weight": 1}]))
    with pytest.raises(Conflict, match="'ab-named' \\(arm 'tiny2'\\)") as refused:
        lifecycle.check_evictable(settings, "tiny2")
    assert "rev@1" not in refused.value.problem


def test_replica_figures_give_tokens_per_second_totals_and_gauges():
    m = ServingMetrics()
    stats = {"memory_bytes": 3 * 2**30, "memory_kind": "rss", "kv_cache_usage": 0.25,
             "running_requests": 2, "waiting_requests": 1, "generated_tokens_total": 100,
             "adapters": {"loaded": ["rev@1-7"]}}
    m.report_stats("tiny", "r1", stats)
    time.sleep(0.2)
    m.report_stats("tiny", "r1", {**stats, "generated_tokens_total": 150})
    (row,) = m.replica_stats()["tiny"]
    assert row["tokens_per_s"] > 0 and row["adapters_loaded"] == ["rev@1"]
    text = m.render()
    assert 'studio_replica_memory_bytes{kind="rss",model="tiny",replica="r1"}' in text
    assert 'studio_replica_kv_cache_usage{model="tiny",replica="r1"} 0.25' in text
    load = {"tiny": {"in_flight": 0, "idle_s": 1.0, "replicas": m.replica_stats()["tiny"]}}
    (entry,) = describe([], load)
    assert entry["source"] == "config" and entry["totals"]["memory_bytes"] == 3 * 2**30
    assert entry["totals"]["running_requests"] == 2 and entry["totals"]["adapters_loaded"] == ["rev@1"]
    m.drop_model("tiny")
    assert m.replica_stats() == {} and "studio_replica_memory_bytes{" not in m.render()


def test_cli_deploy_of_a_missing_model_path_fails_before_touching_anything(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: ghost\ndeployment:\n  engine:\n    model: ./nowhere/model\n")
    env = {**os.environ, "STUDIO_HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([str(Path(sys.executable).with_name("studio")), "serve", "deploy",
                        str(recipe)], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 1
    assert "model path './nowhere/model' does not exist" in r.stderr and "fix:" in r.stderr


# ---- live: the package's shared stack, a second base model deployed and evicted ------------


# The second base model is a merged adapter (issue 25: "a merged model served by vLLM answers like
# the adapter"): a LoRA adapter with random B matrices on the stack's tiny model, merged by the
# studio's own merge (studio.registry.merge, as `studio models merge` does), must give vLLM the same
# greedy answers as the adapter gives PEFT + transformers.
MERGED_PROMPTS = ["reverse: 6 0 4 8", "reverse: 1 2 3", "reverse: 9 7 5 3 1", "reverse: 2 8 1 7"]


def _same(texts: list[str]) -> list[str]:
    # At max_tokens the last token may be half of a UTF-8 character (random weights write bytes):
    # vLLM's detokenizer holds it back, transformers' decode shows U+FFFD.
    return [t.rstrip("\ufffd").strip() for t in texts]


@pytest.fixture(scope="module")
def stack(serving_stack, tiny_model_dir, tmp_path_factory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.registry.merge import MergeSource, merge_to_dir
    from studio.train.evaluate import generate_greedy
    from tests.deployments.conftest import make_adapter

    root = tmp_path_factory.mktemp("tiny2")
    adapter = make_adapter(tiny_model_dir, root / "adapter", seed=21)
    second = merge_to_dir(MergeSource(ref="merged@1", name="merged", version=1, base_model=str(tiny_model_dir),
                                      adapter_type="lora", uri=str(adapter), card="# merged@1\n"),
                          root / "model", cache_dir=root / "cache")
    # The adapter folder holds no tokenizer (make_adapter saves the adapter only): the base's.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(adapter))
    adapter_answers = generate_greedy(model.eval(), AutoTokenizer.from_pretrained(str(tiny_model_dir)),
                                      [[{"role": "user", "content": p}] for p in MERGED_PROMPTS])
    del model
    shared = serving_stack.ensure(replicas=1)
    http = httpx.Client(base_url=shared.url, headers={"Authorization": f"Bearer {shared.key}"},
                        timeout=600)
    yield {"url": shared.url, "http": http, "second": str(second), "settings": shared.settings,
           "key": shared.key, "processes": shared.processes, "adapter_answers": adapter_answers}
    http.close()
    shared.hide_from_leak_watch()


def _chat(http: httpx.Client, model: str, max_tokens: int = 4) -> httpx.Response:
    return http.post("/v1/chat/completions", json={
        "model": model, "messages": CHAT, "max_tokens": max_tokens, "temperature": 0,
        # The untrained tiny model's text may be empty: judge by the tokens it generated.
        "ignore_eos": True}, timeout=120)


class _Client(threading.Thread):
    """Asks the first model over and over; keeps every status that was not 200."""

    def __init__(self, url: str, headers: dict[str, str]):
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=url, headers=headers, timeout=120)
        self.stop, self.ok, self.failed = threading.Event(), 0, []

    def run(self):
        while not self.stop.is_set():
            try:
                r = _chat(self.http, "tiny")
                if r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4:
                    self.ok += 1
                else:
                    self.failed.append((r.status_code, r.text[:200]))
            except httpx.HTTPError as e:
                self.failed.append(("exception", repr(e)))
            time.sleep(0.05)


def _engine_core(processes, app: str) -> psutil.Process:
    """The vLLM EngineCore process under the (one) replica of Serve application ``app``."""
    for proc in processes():
        try:
            if f"ServeReplica:{app}:" not in " ".join(proc.cmdline()):
                continue
            cores = [c for c in proc.children(recursive=True)
                     if "EngineCore" in " ".join(c.cmdline()) or "EngineCore" in c.name()]
        except psutil.Error:
            continue
        if len(cores) == 1:
            return cores[0]
    raise AssertionError(f"no EngineCore process under a replica of {app}")


def _kill_the_engine_and_see_it_come_back(stack) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{stack['url']}/v1", api_key=stack["key"], max_retries=0,
                           timeout=60)  # a request that hangs fails the test (APITimeoutError)

    def ask():
        return client.chat.completions.create(model="tiny2", messages=CHAT, max_tokens=4,
                                              temperature=0, extra_body={"ignore_eos": True})

    def check_503(err: openai.APIStatusError) -> None:
        assert err.status_code == 503 and err.response.headers["retry-after"] == "5", (
            err.response.text)
        body = err.response.json()["error"]
        assert body["type"] == "service_unavailable" and body["code"] == 503
        assert "engine died" in body["message"] and f"pid {core.pid}" in body["message"], body
        assert "SIGKILL" in body["message"], body

    assert ask().usage.completion_tokens == 4
    core = _engine_core(stack["processes"], "model-tiny2")
    # A request in flight inside the engine when it dies: stop the engine, send it, kill it.
    core.suspend()
    inflight: dict = {}

    def ask_in_flight():
        try:
            inflight["answer"] = ask()
        except openai.APIError as e:
            inflight["error"] = e

    waiting = threading.Thread(target=ask_in_flight)
    waiting.start()
    time.sleep(1.0)
    assert waiting.is_alive(), inflight  # held by the stopped engine
    core.kill()  # SIGKILL
    killed = time.monotonic()
    waiting.join(90)
    in_flight_503 = time.monotonic() - killed
    assert isinstance(inflight.get("error"), openai.APIStatusError), inflight
    check_503(inflight["error"])
    with pytest.raises(openai.APIStatusError) as refused:  # and the next one
        ask()
    first_503 = time.monotonic() - killed
    check_503(refused.value)

    # The status says why while it cannot answer (the replica tells the Router within a second
    # or two of vLLM noticing).
    deadline = time.monotonic() + 60
    while (entry := stack["http"].get("/api/deployments/tiny2").json())["status"] != "unhealthy":
        assert time.monotonic() < deadline, entry
        time.sleep(0.2)
    unhealthy = time.monotonic() - killed
    assert "engine died" in entry["message"] and "SIGKILL" in entry["message"], entry
    assert entry["healthy_replicas"] == 0 and entry["stored_status"] == "ready"

    codes = []
    while True:  # 503s (each answered at once) until the new replica serves
        try:
            ask()
            break
        except openai.APIStatusError as e:
            assert e.status_code == 503 and e.response.headers["retry-after"], e.response.text
            codes.append(e.status_code)
        assert time.monotonic() - killed < 600, "tiny2 did not come back"
        time.sleep(1)
    back = time.monotonic() - killed
    entry = stack["http"].get("/api/deployments/tiny2").json()
    assert entry["status"] == "ready" and entry["healthy_replicas"] == 1, entry
    assert _engine_core(stack["processes"], "model-tiny2").pid != core.pid
    print(f"engine killed: the request in flight got its 503 after {in_flight_503:.1f} s, the "
          f"next after {first_503:.1f} s, status unhealthy after {unhealthy:.1f} s, answering "
          f"again after {back:.1f} s ({len(codes)} more 503s between)")


def _restart_and_see_it_serve_again(stack) -> None:
    """`studio serve restart tiny2` (POST /api/deployments/tiny2/restart, the route the UI's Restart
    calls) of a READY model: meanwhile an answer or 503 with Retry-After (never another error), the
    command returns once it serves, READY with one healthy replica on a new engine, and it answers
    /v1 again (issue 26: a restarted model's replica never came back)."""
    http, settings = stack["http"], stack["settings"]
    before = _engine_core(stack["processes"], "model-tiny2").pid
    seen: list[tuple[int, str | None, str]] = []
    stop = threading.Event()

    def ask_meanwhile():
        with httpx.Client(base_url=stack["url"], headers=dict(http.headers), timeout=120) as c:
            while not stop.is_set():
                try:
                    r = _chat(c, "tiny2")
                except httpx.HTTPError as e:  # kept: the assertions below show it
                    seen.append((0, None, repr(e)))
                else:
                    seen.append((r.status_code, r.headers.get("retry-after"),
                                 "" if r.status_code == 200 else r.text[:300]))
                time.sleep(0.2)

    asking = threading.Thread(target=ask_meanwhile)
    asking.start()
    env = {k: v for k, v in os.environ.items() if k not in ("STUDIO_ADMIN_KEY", "RAY_ADDRESS")}
    env.update(STUDIO_HOME=str(settings.home_abs), STUDIO_DATABASE_URL=settings.db_url,
               STUDIO_HTTP_HOST="127.0.0.1", STUDIO_HTTP_PORT=stack["url"].rsplit(":", 1)[1],
               STUDIO_API_KEY=stack["key"])
    started = time.monotonic()
    try:
        r = subprocess.run([str(Path(sys.executable).with_name("studio")), "serve", "restart", "tiny2"],
                           env=env, capture_output=True, text=True, timeout=900)
    finally:
        took = time.monotonic() - started
        stop.set()
        asking.join(150)
    print(f"`studio serve restart tiny2`: {took:.1f} s, rc {r.returncode}, {r.stdout.strip()!r}; "
          f"{len(seen)} requests meanwhile: {[s[:2] for s in seen][:60]}")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "tiny2: ready" in r.stdout, r.stdout
    entry = http.get("/api/deployments/tiny2").json()
    assert entry["status"] == "ready" and entry["stored_status"] == "ready", entry
    assert entry["healthy_replicas"] == 1, entry
    answer = _chat(http, "tiny2")
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4, answer.text
    assert _engine_core(stack["processes"], "model-tiny2").pid != before  # a new engine serves it
    refused = [s for s in seen if s[0] != 200]
    # Meanwhile each request is answered or told to come back (503 + Retry-After), never another
    # error. Which of the two it gets is timing: one sent as the restart begins passes the ingress's
    # route cache and waits for the new replica (the full run's client, asking one request at a
    # time, got 7 answers and no 503); later ones get the 503.
    assert all(code == 503 and retry for code, retry, _ in refused), refused[:5]
    print(f"restart of a ready model: {took:.1f} s (`studio serve restart`), {len(refused)} 503s "
          f"with Retry-After meanwhile, {len(seen) - len(refused)} answers")


@pytest.mark.slow
def test_second_base_model_deployed_served_and_evicted_without_disturbing_the_first(stack):
    http, second = stack["http"], stack["second"]
    loop = _Client(stack["url"], dict(http.headers))
    loop.start()
    try:
        # Bad input first: each is refused with why, and nothing else is disturbed.
        r = http.post("/api/deployments", json=_recipe("/no/such/model"))
        assert r.status_code == 400 and "does not exist" in r.json()["detail"], r.text
        r = http.post("/api/deployments", json=_recipe(second, name="tiny"))
        assert r.status_code == 409 and "serve config" in r.json()["detail"], r.text
        # More than any node holds: a 400 before anything starts (no eviction could help).
        r = http.post("/api/deployments", json=_recipe(second, name="huge", memory_gib=100000))
        assert r.status_code == 400, r.text
        assert re.search(r"memory: needs 100000\.0 GiB; the largest node has [0-9.]+ GiB in all",
                         r.json()["detail"]), r.text
        # 64 GiB of KV cache on this machine: host memory on CPU, counted in the memory need.
        kv64 = _recipe(second, name="kv64")
        kv64["deployment"]["engine"]["kv_cache_space_gib"] = 64
        r = http.post("/api/deployments", json={**kv64, "evict_idle": True})
        assert r.status_code == 400, r.text
        assert "engine.kv_cache_space_gib: 64 GiB" in r.json()["detail"], r.text
        assert re.search(r"[0-9.]+ GiB free now", r.json()["detail"]), r.text
        assert "lower engine.kv_cache_space_gib" in r.json()["fix"], r.text
        print(f"64 GiB of KV cache: {r.status_code} {r.json()['detail']}")
        # Fits a node but not what is free now (the first model holds part of its CPUs): 503.
        r = http.post("/api/deployments", json=_recipe(
            second, name="busy", num_cpus=stack["settings"].ray_num_cpus))
        assert r.status_code == 503, r.text
        assert "CPU: needs" in r.json()["detail"] and "evict_idle" in r.json()["fix"], r.text
        r = _chat(http, "huge")
        assert r.status_code == 404 and "not deployed" in r.json()["error"]["message"]

        r = http.post("/api/deployments", json=_recipe(second))
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "ready" and r.json()["recipe"]["deployment"]["engine"][
            "model"] == second
        r = http.post("/api/deployments", json=_recipe(second))
        assert r.status_code == 409 and "already deployed" in r.json()["detail"]

        answer = _chat(http, "tiny2", max_tokens=8)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 8
        assert answer.headers["x-studio-model-version"] == "tiny2"
        # The merged model, served by vLLM, answers like its adapter in PEFT (greedy, 16 tokens).
        merged = [http.post("/v1/chat/completions", json={
            "model": "tiny2", "messages": [{"role": "user", "content": p}], "max_tokens": 16,
            "temperature": 0}).json()["choices"][0]["message"]["content"] for p in MERGED_PROMPTS]
        base = [http.post("/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": p}], "max_tokens": 16,
            "temperature": 0}).json()["choices"][0]["message"]["content"] for p in MERGED_PROMPTS]
        assert _same(merged) == _same(stack["adapter_answers"]), (merged, stack["adapter_answers"])
        assert _same(merged) != _same(base), "the merged adapter changed nothing"
        served = [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert "tiny" in served and "tiny2" in served

        # Live figures per replica: memory, KV cache, requests, adapters, tokens/s.
        deadline = time.monotonic() + 60
        while True:
            _chat(http, "tiny2", max_tokens=16)
            entries = {e["name"]: e for e in http.get("/api/deployments").json()}
            replicas = entries["tiny2"]["replicas"]
            if replicas and replicas[0]["tokens_per_s"] is not None and entries["tiny"]["replicas"]:
                break
            assert time.monotonic() < deadline, entries
            time.sleep(1)
        rep = replicas[0]
        assert rep["memory_kind"] == "rss" and rep["memory_bytes"] > 2**28
        assert 0 <= rep["kv_cache_usage"] <= 1 and rep["running_requests"] >= 0
        assert rep["waiting_requests"] >= 0 and rep["adapters_loaded"] == []
        assert entries["tiny2"]["source"] == "runtime" and entries["tiny"]["source"] == "config"
        assert entries["tiny2"]["totals"]["memory_bytes"] == rep["memory_bytes"]
        assert http.get("/api/deployments/tiny2").json()["status"] == "ready"
        metrics = http.get("/metrics").text
        assert re.search(r'studio_replica_memory_bytes\{kind="rss",model="tiny2",replica="[^"]+"\} '
                         r'[0-9.e+]+', metrics)
        assert 'studio_replica_tokens_per_second{model="tiny2"' in metrics

        # Its engine killed (kill -9 of vLLM's EngineCore): 503 + Retry-After at once, the
        # reason in its status, answering again by itself; the first model never notices.
        _kill_the_engine_and_see_it_come_back(stack)
        # Restarted from its stored recipe: back, on a new engine; the first model never notices.
        _restart_and_see_it_serve_again(stack)

        # Serving an arm of an active experiment: not evicted until the experiment stops.
        r = http.post("/api/experiments", json={"alias": "ab-evict", "arms": [
            {"model": "tiny2", "weight": 1}, {"model": "tiny", "weight": 1}]})
        assert r.status_code == 201, r.text
        r = http.delete("/api/deployments/tiny2")
        assert r.status_code == 409 and "'ab-evict' (arm 'tiny2')" in r.json()["detail"], r.text
        assert "studio experiments stop ab-evict" in r.json()["fix"], r.text
        assert _chat(http, "tiny2").status_code == 200
        assert http.post("/api/experiments/ab-evict/stop").status_code == 200

        # Evict while a long request is in flight: it finishes, or gets a clean 503.
        outcome = {}

        def long_request():
            r = _chat(httpx.Client(base_url=stack["url"], headers=dict(http.headers)), "tiny2",
                      max_tokens=400)
            outcome["status"] = r.status_code
            outcome["tokens"] = r.json().get("usage", {}).get("completion_tokens")

        inflight = threading.Thread(target=long_request)
        inflight.start()
        time.sleep(0.3)
        r = http.delete("/api/deployments/tiny2")
        assert r.status_code == 200 and r.json()["status"] == "evicted", r.text
        inflight.join(120)
        assert outcome["status"] in (200, 503), outcome
        if outcome["status"] == 200:
            assert outcome["tokens"] == 400
        r = _chat(http, "tiny2")
        assert r.status_code == 404, r.text
        assert "`tiny2` is not deployed" in r.json()["error"]["message"]
        assert http.delete("/api/deployments/tiny2").status_code == 404
        entries = {e["name"]: e for e in http.get("/api/deployments").json()}
        assert entries["tiny2"]["status"] == "evicted" and entries["tiny2"]["replicas"] == []
        assert entries["huge"]["status"] == "failed"
        assert entries["kv64"]["status"] == "failed" and "kv_cache_space_gib" in entries[
            "kv64"]["message"]
        assert "tiny2" not in [m["id"] for m in http.get("/v1/models").json()["data"]]
    finally:
        loop.stop.set()
        loop.join(180)
    assert loop.failed == [], loop.failed[:5]
    assert loop.ok >= 10
    print(f"first model answered {loop.ok} requests during the change, none failed; the request "
          f"in flight at eviction: {outcome}")
