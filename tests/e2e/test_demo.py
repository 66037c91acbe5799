"""The loop end to end (issue 8): ``run_demo`` — the function behind ``make demo`` — with the
``small`` profile (fewer test rows, A/B requests and DPO steps; the same SFT recipe), on a stack of
its own (free ports, a temporary STUDIO_HOME), stopped at the end like ``make demo ARGS=--exit``.

One stack, one run: the assertions below are the outcomes the demo printed as done."""

from __future__ import annotations

import os
import socket

import psutil
import pytest

from studio.settings import StudioSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_small_profile_runs_the_whole_loop(tmp_path, monkeypatch: pytest.MonkeyPatch):
    from studio.cli import demo as demo_mod

    home = tmp_path / "studio-home"
    for name in ("RAY_ADDRESS", "STUDIO_ADMIN_KEY", "STUDIO_DATABASE_URL", "STUDIO_ARTIFACTS_URI",
                 "STUDIO_MLFLOW_URI", "STUDIO_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    env = {"STUDIO_HOME": str(home), "STUDIO_HTTP_PORT": str(free_port()),
           "STUDIO_RAY_PORT": str(free_port()), "STUDIO_DASHBOARD_PORT": str(free_port())}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = demo_mod.run_demo(exit_at_end=True, profile="small", settings=StudioSettings())

    p = demo_mod.PROFILES["small"]
    assert result.base_em is not None and result.base_em <= p.max_base_em
    assert result.sft_version == "reverse-tiny@1" and result.sft_em >= p.min_adapter_em
    assert result.promotion["outcome"] == "promoted"
    arms = {a["model"]: a for a in result.experiment["arms"]}
    assert set(arms) == {"tiny", "reverse-tiny@1"} and all(a["requests"] > 0 for a in arms.values())
    assert result.feedback["positive"] > 0 and result.feedback["negative"] > 0
    assert result.preference_dataset["kind"] == "preference" and result.preference_dataset["rows"] > 0
    assert result.dpo_version == "reverse-tiny@2" and result.dpo_em >= p.min_adapter_em
    assert result.dpo_gate["outcome"] in ("promoted", "refused")
    board = {(r["model"], r["scorer"]): r["mean"] for r in result.leaderboard["scores"]}
    assert board[("reverse-tiny@1", "exact_match")] >= p.min_adapter_em
    assert ("reverse-tiny@2", "exact_match") in board
    assert any(r["service"] == "eval" and r["calls"] > 0 for r in result.usage)
    assert len(result.step_seconds) == 10  # steps 0-9, each printed as done only after it happened
    # --exit: the stack is down; no process of it (they all carry its STUDIO_HOME) is left.
    assert not (home / "ray-head.json").exists()
    assert stray_processes(str(home)) == []


def stray_processes(home: str) -> list[str]:
    """Live processes (not this one) whose environment names this STUDIO_HOME."""
    out = []
    for proc in psutil.process_iter(["pid", "name", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get("STUDIO_HOME") == home:
                out.append(f"{proc.pid} {proc.info['name']}")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return out
