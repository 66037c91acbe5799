"""Serving under change, live: the studio application (ingress + Router + a ModelDeployment of the
tiny model with TWO replicas) under real Ray Serve, driven by the official ``openai`` client.

* hot swap under load: 8 concurrent clients for ~30 s while two registry versions are registered
  and promoted — no failed request, and once a client sees a new version it never sees an older
  one; every replica that answers loads the adapter it is asked for (no broadcast needed);
* an A/B experiment alias: weights honoured over many users, sticky per user, the arm and the
  concrete version named in every answer; feedback on the answers and their export as a
  preference dataset snapshot;
* Prometheus metrics per model and version on the ingress's /metrics, beside both replicas' own
  vLLM series (labelled deployment/version/replica) and every metric the Grafana dashboard in
  configs/monitoring/ names.

The package's shared stack (tests/deployments/serving_stack.py), scaled to two replicas for this
module (started with two when this module runs first: the engines start in parallel).
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.deployments.conftest import make_adapter
from tests.monitoring import dashboard_metric_names

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow
PROMPT = [{"role": "user", "content": "reverse: 1 2 3"}]
_BASE_DIR: list[str] = []  # the stack's tiny model, for _ask's tokenizer


@pytest.fixture(scope="module")
def stack(serving_stack, tiny_model_dir):
    shared = serving_stack.ensure(replicas=2)
    _BASE_DIR[:] = [str(tiny_model_dir)]
    http = httpx.Client(base_url=shared.url, headers={"Authorization": f"Bearer {shared.key}"},
                        timeout=60)
    yield {"url": shared.url, "key": shared.key, "settings": shared.settings,
           "base_dir": str(tiny_model_dir), "http": http, "client": _client(shared.url, shared.key)}
    http.close()
    shared.hide_from_leak_watch()


def _client(url: str, key: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


@functools.cache
def _visible_only(base_dir: str) -> dict[str, int]:
    """logit_bias against tokens that show nothing on their own: lone UTF-8 bytes (the
    detokenizer holds them back until a character is whole) and whitespace."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    texts = {i: tok.decode([i]) for i in range(len(tok))}
    return {str(i): -100 for i, t in texts.items() if "\ufffd" in t or (t and not t.strip())}


def _ask(client, model: str, user: str | None = None, max_tokens: int = 6):
    """(version header, arm header, parsed body)."""
    extra = {"user": user} if user else {}
    # The untrained base model left to itself may answer with lone bytes or special tokens only:
    # its answers are kept visible (special tokens kept, ignore_eos, no invisible tokens), since a
    # preference pair needs non-empty text.
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=PROMPT, max_tokens=max_tokens, temperature=0,
        logit_bias=_visible_only(_BASE_DIR[0]),
        extra_body={"ignore_eos": True, "skip_special_tokens": False}, **extra)
    return (raw.headers["x-studio-model-version"], raw.headers.get("x-studio-arm"), raw.parse())


def _register(settings, name: str, adapter_dir, base: str, champion: bool) -> str:
    from studio.registry.versions import promote, register_version
    from studio.store.db import session_scope

    with session_scope(settings.db_url) as session:
        mv = register_version(session, name=name, base_model=base, method="sft",
                              adapter_type="lora", uri=str(adapter_dir))
        ref = f"{mv.name}@{mv.version}"
        if champion:
            promote(session, ref)
    return ref


def _eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, openai.NotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_hot_swap_under_load_has_no_failed_requests(stack, tmp_path):
    settings, base = stack["settings"], stack["base_dir"]
    adapters = [make_adapter(base, tmp_path / f"v{i}", seed=10 + i) for i in (1, 2, 3)]
    assert _register(settings, "swap", adapters[0], base, champion=True) == "swap@1"
    _eventually(lambda: _expect(_ask(stack["client"], "swap")[0], "swap@1"))

    stop = threading.Event()
    results: list[list[tuple[float, str]]] = [[] for _ in range(8)]
    failures: list[str] = []

    def worker(i: int) -> None:
        client = _client(stack["url"], stack["key"])
        while not stop.is_set():
            try:
                version, _, body = _ask(client, "swap")
                assert body.choices[0].message.content is not None
                results[i].append((time.monotonic(), version))
            except Exception as e:  # noqa: BLE001 — every failure is reported below
                failures.append(f"worker {i}: {type(e).__name__}: {e}")

    per_phase = 3

    def every_worker_answered(ref: str, what: str) -> None:
        """Until each of the 8 clients has had ``per_phase`` answers from ``ref`` (a hang guard, not a
        timed assertion); a failure ends the wait, for the assertions below to show."""
        deadline = time.monotonic() + 120
        while not failures and not all(sum(v == ref for _, v in r) >= per_phase for r in results):
            if time.monotonic() > deadline:
                stop.set()
                raise AssertionError(f"{what}: not every client had {per_phase} answers from {ref} in 120 s: "
                                     f"{[Counter(v for _, v in r) for r in results]}")
            time.sleep(0.1)

    # Each phase lasts until every client has had a few answers from the version being served (was
    # fixed windows: promotions at 8 and 18 s, stop at 30 s; the swap is the same, the idle seconds
    # after it are not waited out).
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    promoted = {}
    try:
        every_worker_answered("swap@1", "under load")
        for ref, adapter, before in (("swap@2", adapters[1], "swap@1"), ("swap@3", adapters[2], "swap@2")):
            if failures:
                break
            assert _register(settings, "swap", adapter, base, champion=True) == ref
            promoted[ref] = time.monotonic()
            every_worker_answered(ref, f"after {ref} replaced {before}")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)

    assert not failures, failures[:5]
    order = {"swap@1": 1, "swap@2": 2, "swap@3": 3}
    for i, answers in enumerate(results):
        ranks = [order[v] for _, v in answers]
        assert ranks == sorted(ranks), f"worker {i} went back to an older version: {ranks}"
        assert ranks and ranks[-1] == 3, f"worker {i} never reached swap@3"
    seen = Counter(v for answers in results for _, v in answers)
    assert set(seen) == set(order), seen
    for ref, at in promoted.items():
        first = min(t for answers in results for t, v in answers if v == ref)
        print(f"{ref}: first answer {first - at:.2f} s after promotion")
    print(f"{sum(seen.values())} requests in {time.monotonic() - started:.1f} s by 8 clients, none failed: "
          f"{dict(seen)}")

    # Both replicas answered, and each loaded swap@3 itself: the gauge shows it on two replicas.
    def on_both_replicas():
        text = stack["http"].get("/metrics").text
        replicas = re.findall(r'studio_adapters_loaded\{[^}]*version="swap@3"[^}]*\} 1\.0', text)
        assert len(replicas) == 2, replicas

    _eventually(on_both_replicas, timeout=15)


def test_ab_alias_splits_by_weight_sticky_per_user_with_feedback_and_export(stack, tmp_path):
    from studio.data.snapshots import read_table, resolve_snapshot
    from studio.store.db import session_scope

    http, settings, base = stack["http"], stack["settings"], stack["base_dir"]
    _register(settings, "ab-rev", make_adapter(base, tmp_path / "ab", seed=21), base,
              champion=False)
    r = http.post("/api/experiments", json={"alias": "rev-ab", "arms": [
        {"model": "tiny", "weight": 3}, {"model": "ab-rev@1", "weight": 1}]})
    assert r.status_code == 201, r.text
    bad = http.post("/api/experiments", json={"alias": "x", "arms": [{"model": "nope",
                                                                       "weight": 1}]})
    assert bad.status_code == 404 and "served base model" in bad.json()["detail"]
    _eventually(lambda: _expect("rev-ab" in [m.id for m in stack["client"].models.list().data],
                                True))

    users = [f"user-{i}" for i in range(60)]
    with ThreadPoolExecutor(4) as pool:
        first = dict(zip(users, pool.map(lambda u: _ask(stack["client"], "rev-ab", u), users)))
    arms = Counter(arm for _, arm, _ in first.values())
    assert 33 <= arms["tiny"] <= 56 and arms["ab-rev@1"] >= 4, arms  # 3:1 over 60 users
    for user, (version, arm, body) in first.items():
        assert version == {"tiny": "tiny", "ab-rev@1": "ab-rev@1"}[arm]
        assert body.model_extra["studio_arm"] == arm
        assert body.model_extra["studio_experiment"] == "rev-ab"
        assert body.model_extra["studio_model_version"] == version
    again = {u: _ask(stack["client"], "rev-ab", u)[1] for u in users[:12]}
    assert again == {u: first[u][1] for u in users[:12]}, "a user changed arms"

    # Feedback right after the answers (they may still be in the Router's write buffer).
    by_arm = {arm: [b for _, a, b in first.values() if a == arm] for arm in arms}
    base_answer, adapter_answer = by_arm["tiny"][0], by_arm["ab-rev@1"][0]
    texts = [a.choices[0].message.content for a in (base_answer, adapter_answer)]
    assert all(t.strip() for t in texts) and texts[0] != texts[1], texts
    r = http.post("/v1/feedback", json={"completion_id": base_answer.id,
                                        "preferred_completion_id": adapter_answer.id,
                                        "comment": "the adapter reverses"})
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "tiny" and r.json()["arm"] == "tiny"
    assert http.post("/v1/feedback", json={"completion_id": by_arm["ab-rev@1"][1].id,
                                           "rating": 1}).status_code == 200
    missing = http.post("/v1/feedback", json={"completion_id": "chatcmpl-nope", "rating": 1})
    assert missing.status_code == 404 and "chatcmpl-nope" in missing.json()["error"]["message"]

    stats = http.get("/api/experiments/rev-ab").json()
    per_arm = {a["model"]: a for a in stats["arms"]}
    assert stats["requests"] == 72 and stats["feedback"] == 2
    assert per_arm["tiny"]["requests"] == arms["tiny"] + Counter(again.values())["tiny"]
    assert per_arm["ab-rev@1"]["versions"] == ["ab-rev@1"]
    assert per_arm["tiny"]["latency_ms_p50"] > 0 and per_arm["ab-rev@1"]["preferred"] == 1
    assert per_arm["ab-rev@1"]["rating_mean"] == 1.0

    exported = http.post("/api/experiments/rev-ab/export", json={"name": "ab-pref"})
    assert exported.status_code == 201, exported.text
    assert exported.json()["explicit"] == 1 and exported.json()["rows"] >= 1
    with session_scope(settings.db_url) as s:
        rows = read_table(resolve_snapshot(s, "ab-pref").snapshot.uri).to_pylist()
    assert {"prompt": "reverse: 1 2 3", "chosen": adapter_answer.choices[0].message.content,
            "rejected": base_answer.choices[0].message.content} in rows

    assert http.post("/api/experiments/rev-ab/stop").json()["status"] == "stopped"

    def stopped():
        # An assertion, not pytest.raises: its "DID NOT RAISE" is no AssertionError, and
        # _eventually must retry until the Router re-reads the experiments.
        try:
            _ask(stack["client"], "rev-ab", "user-1")
        except openai.NotFoundError as e:
            assert "stopped" in str(e), e
        else:
            raise AssertionError("the stopped experiment still answered")

    _eventually(stopped)


def test_metrics_per_model_and_version_on_the_ingress(stack):
    with pytest.raises(openai.NotFoundError):
        _ask(stack["client"], "no-such-model")
    stream = stack["client"].chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4,
                                                     stream=True)
    assert list(stream)
    r = stack["http"].get("/metrics")
    assert r.status_code == 200
    text = r.text

    from prometheus_client.parser import text_string_to_metric_families

    # Label order in the exposition is the client library's business: compare label sets.
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in samples, f"{name}{labels} not in /metrics"
        return samples[key]

    assert value("studio_requests_total", model="tiny", version="tiny", endpoint="chat") >= 40
    assert value("studio_requests_total", model="tiny", version="swap@3", endpoint="chat") >= 8
    assert value("studio_ttft_seconds_count", model="tiny", version="ab-rev@1") >= 4
    assert value("studio_output_tokens_total", model="tiny", version="tiny") > 0
    assert value("studio_request_errors_total", model="(unresolved)", version="(unresolved)",
                 code="404") >= 1
    assert value("studio_completion_log_rows", outcome="written") > 0
    assert "studio_adapters_loaded{" in text
    assert httpx.get(f"{stack['url']}/metrics").status_code == 401

    # Every metric the shipped Grafana dashboard names is on /metrics; the engines' own vllm:*
    # series (reported every few seconds) carry the deployment, version and replica, for both
    # replicas, in an exposition that parses (each family once).
    def dashboard_names_exported():
        families = list(text_string_to_metric_families(stack["http"].get("/metrics").text))
        names = {s.name for f in families for s in f.samples}
        missing = dashboard_metric_names() - names
        assert not missing, f"not on /metrics: {sorted(missing)}"
        engine = [s for f in families if f.name.startswith("vllm:") for s in f.samples]
        for sample in engine:
            assert sample.labels.get("deployment", "").startswith("Model-tiny"), sample
            if "model_name" in sample.labels:
                assert sample.labels["version"] == sample.labels["model_name"] == "tiny", sample
        ttft = [s for s in engine if s.name == "vllm:time_to_first_token_seconds_count"]
        assert len({s.labels["replica"] for s in ttft}) == 2 and sum(s.value for s in ttft) >= 1

    _eventually(dashboard_names_exported, timeout=20)


def _expect(value, wanted):
    assert value == wanted, value
    return value
