"""`studio up` → HTTP front door → `studio down`, through the CLI and real HTTP, on a real local Ray
head. Ports are picked free so the test never collides with a studio a developer has running."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STUDIO = str(Path(sys.executable).with_name("studio"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([STUDIO, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def stack(api_stack):
    """The package's API-only `studio up` (tests/e2e/conftest.py), which test_jobs_e2e used first."""
    yield {"env": api_stack.env, "home": api_stack.home, "base": api_stack.base,
           "up_output": api_stack.up_output, "head_pid": api_stack.head_pid}
    api_stack.hide_from_leak_watch()


def test_health_needs_no_key_and_api_needs_one(stack):
    base = stack["base"]
    assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
    r = httpx.get(f"{base}/api/me")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "Authorization: Bearer" in r.json()["detail"]
    assert httpx.get(f"{base}/api/me", headers={"Authorization": "Bearer sk-studio-wrong"}).status_code == 401
    admin = (stack["home"] / "admin.key").read_text().strip()
    assert str(stack["home"] / "admin.key") in stack["up_output"]
    r = httpx.get(f"{base}/api/me", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and r.json()["role"] == "admin"


def test_cli_key_and_ingest_are_seen_by_the_running_app(stack, tmp_path):
    env, base = stack["env"], stack["base"]
    r = run(["keys", "create", "--name", "alice", "--role", "user"], env)
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip().splitlines()[-1]
    auth = {"Authorization": f"Bearer {secret}"}
    me = httpx.get(f"{base}/api/me", headers=auth).json()
    assert (me["name"], me["role"]) == ("alice", "user") and isinstance(me["id"], int)
    assert httpx.get(f"{base}/api/keys", headers=auth).status_code == 403

    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "reverse: 1 2", "completion": "2 1"}\n{oops\n{"prompt": "reverse: 3 4"}\n')
    r = run(["data", "ingest", str(data), "--name", "tiny"], env)
    assert r.returncode == 0, r.stderr
    assert "row 2" in r.stdout and "broken JSON" in r.stdout
    assert "row 3" in r.stdout and "completion" in r.stdout
    listed = httpx.get(f"{base}/api/datasets", headers=auth).json()  # test_jobs_e2e's digits too
    assert [(d["name"], d["rows"], d["rejected_rows"]) for d in listed if d["name"] == "tiny"] == [("tiny", 1, 2)]

    r = run(["keys", "revoke", "alice"], env)
    assert r.returncode == 0
    assert httpx.get(f"{base}/api/me", headers=auth).status_code == 401


def test_up_again_is_idempotent_and_status_reports_up(stack):
    r = run(["up"], stack["env"])
    assert r.returncode == 0, r.stderr
    assert "already set up" in r.stdout
    assert json.loads((stack["home"] / "ray-head.json").read_text())["pid"] == stack["head_pid"]
    r = run(["status"], stack["env"])
    assert r.returncode == 0 and " up" in r.stdout
    # Serve's high-throughput mode (STUDIO_SERVE_FAST_PATH, on by default): HAProxy holds the
    # HTTP port (test_down_stops_the_head_and_its_processes: and lets go of it at `studio down`).
    assert "front door   HAProxy" in r.stdout, r.stdout
    out = _words(r.stdout)  # the URLs, each service's state, the versions (issue 24, item 3)
    assert f"ui {stack['base']}/ui" in out and f"api {stack['base']}/api" in out, r.stdout
    assert "ray dashboard http://127.0.0.1:" in out and "mlflow " in out, r.stdout
    assert "Router HEALTHY 1/1 replicas running" in out and "ApiIngress HEALTHY" in out, r.stdout
    assert "versions ray 2." in out and " · torch " in out, r.stdout
    # The MLflow UI on the studio's tracking store (issue 26 item 2), started by the first `up`.
    ui = f"http://127.0.0.1:{stack['env']['STUDIO_MLFLOW_PORT']}"
    assert f"MLflow UI: {ui} (up)" in _words(stack["up_output"]), stack["up_output"]
    assert f"mlflow ui {ui} up" in out, r.stdout
    assert httpx.get(f"{ui}/health", timeout=5).text == "OK"
    assert "haproxy" in _listener(int(stack["env"]["STUDIO_HTTP_PORT"])).name()


def test_serve_deploy_ls_evict_from_the_cli(stack, api_stack, tmp_path):
    """The default `studio up` serves no model; `studio serve deploy` adds one at runtime (the
    recipe in configs/serve/models/ with a model path override), `ls` shows it with live figures;
    after the Ray head is killed (kill -9 of its group) and `studio up` runs, it answers again by
    itself (503 + Retry-After meanwhile),
    an evicted name stays evicted, one whose model folder was deleted fails with the reason, and
    `ls` never says ready with 0 healthy replicas; `evict` removes it and its name answers 404
    "not deployed"."""
    env, base = stack["env"], stack["base"]
    auth = {"Authorization": f"Bearer {(stack['home'] / 'admin.key').read_text().strip()}"}
    model = tmp_path / "tiny-cli"
    r = run(["models", "make-tiny", "--out", str(model), "seed=2"], env)
    assert r.returncode == 0, r.stderr
    r = run(["serve", "deploy", str(REPO / "configs/serve/models/tiny2.yaml"), "name=tiny-cli",
             f"deployment.engine.model={model}"], env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tiny-cli is serving" in r.stdout
    chat = {"model": "tiny-cli", "messages": [{"role": "user", "content": "reverse: 1 2"}],
            "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    answer = httpx.post(f"{base}/v1/chat/completions", json=chat, headers=auth, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 4
    r = run(["serve", "ls", "--json"], env)
    assert r.returncode == 0, r.stderr
    entry = {e["name"]: e for e in json.loads(r.stdout)}["tiny-cli"]
    assert entry["status"] == "ready" and entry["source"] == "runtime", entry
    assert entry["totals"]["replicas"] == 1 and entry["totals"]["memory_bytes"] > 2**28, entry
    r = run(["serve", "deploy", str(REPO / "configs/serve/models/tiny2.yaml"), "name=tiny-cli",
             f"deployment.engine.model={model}"], env)
    assert r.returncode != 0 and "already deployed" in r.stdout + r.stderr, r.stdout + r.stderr
    _restart_brings_it_back(stack, api_stack, model, chat, auth, tmp_path)
    r = run(["serve", "evict", "tiny-cli"], env, timeout=300)
    assert r.returncode == 0 and "evicted" in r.stdout, r.stdout + r.stderr
    gone = httpx.post(f"{base}/v1/chat/completions", json=chat, headers=auth, timeout=60)
    assert gone.status_code == 404 and "not deployed" in gone.json()["error"]["message"], gone.text


def _restart_brings_it_back(stack, api_stack, model: Path, chat: dict, auth: dict, tmp_path: Path):
    import shutil

    from studio.recipes import load_recipe
    from studio.serving.recipe import DeploymentStatus, ServingRecipe, claim, set_status
    from studio.settings import StudioSettings
    from studio.store.db import session_scope

    env, base = stack["env"], stack["base"]
    recipe = str(REPO / "configs/serve/models/tiny2.yaml")
    # Evicted before the restart: a deploy the cluster cannot hold (FAILED at once), then evicted.
    r = run(["serve", "deploy", recipe, "name=tiny-evicted", f"deployment.engine.model={model}",
             "deployment.num_cpus=64"], env)
    assert r.returncode != 0 and "no node of this cluster can hold one replica of 'tiny-evicted'" in _words(
        r.stderr) and "CPU: needs 64" in _words(r.stderr), r.stdout + r.stderr
    assert run(["serve", "evict", "tiny-evicted"], env).returncode == 0
    # A READY row whose model folder is deleted while the studio is down (as a deploy leaves it).
    gone = shutil.copytree(model, tmp_path / "tiny-gone")
    spec = load_recipe(recipe, ServingRecipe, ["name=tiny-gone", f"deployment.engine.model={gone}"])
    with session_scope(StudioSettings(home=stack["home"]).db_url) as s:
        set_status(claim(s, spec, "test"), DeploymentStatus.READY)
    # The head dies (kill -9 of its process group, as a crash would; HAProxy keeps its own group and
    # the HTTP port): `studio up` clears what is left of it, starts again and restores. `studio down`
    # then `up` takes the same path from a fresh head (test_down_stops_the_head_and_its_processes
    # covers `down` itself).
    old_head = stack["head_pid"]
    os.killpg(os.getpgid(old_head), signal.SIGKILL)
    shutil.rmtree(gone)
    r = run(["up"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restoring 2 runtime deployment(s) in the background: tiny-cli, tiny-gone" in _words(r.stdout), r.stdout
    stack["head_pid"] = api_stack.head_pid = json.loads((stack["home"] / "ray-head.json").read_text())["pid"]
    assert stack["head_pid"] != old_head
    assert httpx.get(f"{base}/api/me", headers=auth, timeout=10).status_code == 200  # same database and keys
    started, waits, states = time.monotonic(), 0, set()
    while True:  # no manual step: the same request answers again within 5 minutes
        answer = httpx.post(f"{base}/v1/chat/completions", json=chat, headers=auth, timeout=120)
        if answer.status_code == 200:
            break
        assert answer.status_code == 503 and int(answer.headers["retry-after"]) > 0, answer.text
        assert answer.json()["error"]["type"] == "service_unavailable", answer.text
        assert "coming back after a restart" in answer.json()["error"]["message"], answer.text
        waits += 1
        r = run(["serve", "ls", "--json"], env)
        for e in json.loads(r.stdout):
            states.add((e["name"], e["status"]))
            assert e["status"] != "ready" or e["healthy_replicas"] >= 1, e
        assert time.monotonic() - started < 300, (states, answer.text)
        time.sleep(3)
    print(f"restart: tiny-cli answered {time.monotonic() - started:.1f} s after `studio up` "
          f"returned ({waits} answers of 503 before; states seen {sorted(states)})")
    assert waits >= 1 and ("tiny-cli", "restoring") in states, states
    assert answer.json()["usage"]["completion_tokens"] == 4
    entries = {e["name"]: e for e in json.loads(run(["serve", "ls", "--json"], env).stdout)}
    assert (entries["tiny-cli"]["status"], entries["tiny-cli"]["healthy_replicas"]) == ("ready", 1)
    assert entries["tiny-evicted"]["status"] == "evicted", entries["tiny-evicted"]
    failed = entries["tiny-gone"]
    assert failed["status"] == "failed" and f"model path '{gone}' does not exist" in failed["message"]
    evicted = httpx.post(f"{base}/v1/chat/completions", json={**chat, "model": "tiny-evicted"},
                         headers=auth, timeout=60)
    assert evicted.status_code == 404 and "not deployed" in evicted.text, evicted.text


def _words(text: str) -> str:
    return " ".join(text.split())  # the CLI's console wraps at 80 columns


def test_up_on_a_taken_port_says_which_and_how_to_fix(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "STUDIO_HOME": str(tmp_path), "STUDIO_HTTP_PORT": str(port)}
        env.pop("RAY_ADDRESS", None)
        r = run(["up"], env, timeout=60)
    assert r.returncode == 1
    assert f"port {port}" in r.stderr and "STUDIO_HTTP_PORT" in r.stderr
    assert not (tmp_path / "ray-head.json").exists()


def test_unreachable_database_is_a_clear_error(tmp_path):
    env = {**os.environ, "STUDIO_HOME": str(tmp_path), "STUDIO_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    r = run(["data", "ls"], env, timeout=60)
    assert r.returncode == 1
    assert "cannot reach the database" in r.stderr and "STUDIO_DATABASE_URL" in r.stderr


def test_down_stops_the_head_and_its_processes(stack):
    pid, env = stack["head_pid"], stack["env"]
    group = os.getpgid(pid)
    r = run(["down"], env)
    assert r.returncode == 0 and "stopped" in r.stdout
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{stack['base']}/healthz", timeout=2)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == group and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            break
        time.sleep(0.5)
    assert not left, [p.cmdline() for p in left]
    assert not (stack["home"] / "ray-head.json").exists()
    # HAProxy runs in a process group of its own: it is gone too, the HTTP port is free again.
    assert _listener(int(env["STUDIO_HTTP_PORT"])) is None
    # So does the MLflow UI's.
    assert _listener(int(env["STUDIO_MLFLOW_PORT"])) is None and not (stack["home"] / "mlflow-ui.json").exists()


def _listener(port: int) -> psutil.Process | None:
    pid = next((c.pid for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port), None)
    return psutil.Process(pid) if pid else None


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_serve_run_with_the_config_file_serves_the_tiny_model_and_its_adapters(tmp_path):
    """`serve run configs/serve/studio.yaml`: the same app as `studio up`, serving the tiny model
    (built on first start under $STUDIO_HOME) and, without a redeploy, a registered adapter."""
    from studio.keys import create_key
    from studio.registry.versions import register_version
    from studio.settings import StudioSettings
    from studio.store.db import session_scope
    from tests.deployments.conftest import make_adapter

    cfg = yaml.safe_load((REPO / "configs/serve/studio.yaml").read_text())
    assert cfg["applications"][0]["args"]["models"][0]["engine"]["model"] == "$STUDIO_HOME/models/tiny"
    serve_bin = str(Path(sys.executable).with_name("serve"))
    # In one suite run of two on 2026-12-06 `serve run` exited before /healthz (its output was not
    # kept then; it is now, in the warning below) and passed alone and in its module right after:
    # one more try, on a fresh home and port, says so and keeps the outcome deterministic while the
    # cause is looked for; two early exits fail with both outputs.
    tails = []
    for attempt in (1, 2):
        port = free_port()
        cfg["http_options"]["port"] = port
        cfg_path = tmp_path / f"studio-{attempt}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        home = tmp_path / f"home-{attempt}"
        env = {**os.environ, "STUDIO_HOME": str(home), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "1"}
        env.pop("RAY_ADDRESS", None)
        env.pop("STUDIO_DATABASE_URL", None)
        log = tmp_path / f"serve-run-{attempt}.log"  # its output, shown when it exits early
        # RAY_ADDRESS=local: a fresh local Ray of its own, never another cluster on this machine.
        # As from a terminal: Ctrl-C is delivered. A test run started in the background by a
        # non-interactive shell (CI, `make test &`) has SIGINT ignored, which `serve run` would
        # inherit across exec and then ignore the Ctrl-C below (its processes lived until a 60 s
        # wait killed them, in every suite run).
        with log.open("wb") as out:
            proc = subprocess.Popen([serve_bin, "run", str(cfg_path)], env={**env, "RAY_ADDRESS": "local"},
                                    cwd=REPO, start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=_default_sigint)
        started = time.monotonic()
        if _healthy_or_exited(proc, port, log, home):
            break
        tails.append(f"attempt {attempt} (exit {proc.returncode}):\n{_tail(log)}")
        _stopped_or_stop(str(home), wait_s=40)
        warnings.warn("serve run exited before /healthz; " + tails[-1])
    else:
        pytest.fail("serve run exited before /healthz twice:\n" + "\n".join(tails))
    try:
        print(f"serve run: /healthz answered after {time.monotonic() - started:.1f} s")
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/api/datasets").status_code == 401
        model_dir = home / "models" / "tiny"
        assert (model_dir / "config.json").exists(), "the tiny model was not built on first start"
        settings = StudioSettings(home=home)
        with session_scope(settings.db_url) as session:
            key, _ = create_key(session, "serve-run", "admin")
        http = httpx.Client(base_url=f"{url}/v1", headers={"Authorization": f"Bearer {key}"},
                            timeout=120)
        assert "tiny" in [m["id"] for m in http.get("/models").json()["data"]]

        def ask(model: str) -> tuple[str, list[tuple[str, float]]]:
            # Compare what the model scores, not the text: the untrained tiny model may well answer
            # "" (end of sequence first) with or without an adapter. ignore_eos keeps four tokens.
            r = http.post("/chat/completions", json={
                "model": model, "max_tokens": 4, "temperature": 0, "ignore_eos": True,
                "logprobs": True, "top_logprobs": 3,
                "messages": [{"role": "user", "content": "reverse: 1 2 3"}]})
            assert r.status_code == 200, r.text
            tokens = r.json()["choices"][0]["logprobs"]["content"]
            assert len(tokens) == 4, tokens
            scored = [(t["token"], round(t["logprob"], 3)) for t in tokens]
            return r.headers["x-studio-model-version"], scored

        version, base_scores = ask("tiny")
        assert version == "tiny"
        adapter = make_adapter(model_dir, tmp_path / "adapter", seed=3)
        with session_scope(settings.db_url) as session:
            register_version(session, name="srun", base_model=str(model_dir.resolve()),
                             method="sft", adapter_type="lora", uri=str(adapter))
        deadline = time.monotonic() + 30
        while True:  # the Router re-reads the registry within about a second
            r = http.post("/chat/completions", json={"model": "srun", "max_tokens": 1,
                                                     "messages": [{"role": "user", "content": "x"}]})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        version, adapter_scores = ask("srun")
        assert version == "srun@1"
        assert adapter_scores != base_scores, "the adapter did not change what the model scores"
    finally:
        print(f"serve run: Ctrl-C after {time.monotonic() - started:.1f} s")
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Seen in every suite run started in the background before _default_sigint.
            status = Path(f"/proc/{proc.pid}/status").read_text()
            warnings.warn("serve run ignored Ctrl-C for 60 s: " + " ".join(
                line for line in status.splitlines() if line.startswith(("SigBlk", "SigIgn"))))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Ctrl-C on `serve run` stops its local Ray under the replicas; the vLLM engine core a
        # replica started is not Ray's and used to outlive it (CI had an EngineCore and its Worker
        # alive for the rest of the run). deployments/engines/vllm_orphan_guard.py ends it now.
        # Everything of this STUDIO_HOME must be gone on its own; what is not is stopped here.
        print(f"serve run: exited after {time.monotonic() - started:.1f} s")
        left = _stopped_or_stop(str(home), wait_s=40)
        print(f"serve run: all of its processes gone after {time.monotonic() - started:.1f} s")
    assert not left, f"still running {40} s after Ctrl-C on `serve run`: {left}"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _healthy_or_exited(proc: subprocess.Popen, port: int, log: Path, home: Path) -> bool:
    """True once /healthz answers; False when the process exited first; fails after 420 s."""
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            return False
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    _stopped_or_stop(str(home), wait_s=40)
    pytest.fail("serve run did not serve /healthz in 420 s:\n" + _tail(log))


def _tail(log: Path, lines: int = 60) -> str:
    """The last lines of a log, without the repeated warnings that hide the error."""
    text = [x for x in log.read_text(errors="replace").splitlines() if "WARNING" not in x]
    return "\n".join(text[-lines:])


def processes_of(home: str) -> list[psutil.Process]:
    """Live processes (not this one) whose environment names ``home`` as STUDIO_HOME."""
    found = []
    for p in psutil.process_iter(["pid", "status"]):
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if p.environ().get("STUDIO_HOME") == home:
                found.append(p)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def _stopped_or_stop(home: str, wait_s: float) -> list[str]:
    """Waits up to ``wait_s`` for the processes of ``home`` to end; kills those that did not and
    returns their names."""
    deadline = time.monotonic() + wait_s
    while (procs := processes_of(home)) and time.monotonic() < deadline:
        time.sleep(1)
    left = []
    for p in procs:
        try:
            left.append(f"{p.pid} {p.name()}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return left
