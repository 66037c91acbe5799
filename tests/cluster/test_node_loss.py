"""Node loss on a multi-node Ray on this machine (issue 24 item 8), through ``scripts/node_loss.py``,
whose JSON report the figures in docs/operations.md ("Node loss") come from:

- the node under a running SFT job goes: Ray Train starts the worker again on the other node, from
  the job's latest checkpoint, and the job registers its model once;
- the node under the tiny model's serving replica goes while 8 clients stream through ``/v1``:
  Serve starts the replica on the other node; every request that failed got an OpenAI error body,
  none ran into the client's timeout, and answers come again.

Each scenario runs the script in a process group of its own, killed at the end whatever happens.
How long recovery took is reported, never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from deployments.router_client import replica_failure

REPO = Path(__file__).resolve().parents[2]


def test_a_replica_that_went_away_is_a_retryable_openai_error():
    dropped = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
    for exc in (ActorDiedError(), ActorUnavailableError("Actor is unavailable.", None), dropped):
        err = replica_failure("tiny", exc)["error"]
        assert err["code"] == 503 and err["type"] == "ServiceUnavailableError"
        assert "`tiny`" in err["message"] and "retry" in err["message"]
    err = replica_failure("tiny", ValueError("bad logits"))["error"]
    assert err["code"] == 500 and "ValueError: bad logits" in err["message"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from studio.models.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")


def run_scenario(which: str, tmp_path: Path, model: Path, timeout_s: float) -> dict:
    out = tmp_path / f"{which}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_") and k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "node_loss.py"), which, "--out", str(out),
                             "--model", str(model), "--work", str(tmp_path / "work")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"scripts/node_loss.py {which} ran over {timeout_s} s:\n{output.decode(errors='replace')[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its group still alive
        except ProcessLookupError:
            pass
    text = output.decode(errors="replace")
    assert out.exists(), text[-4000:]
    report = json.loads(out.read_text())[which]
    assert "error" not in report and proc.returncode == 0, f"{report}\n{text[-4000:]}"
    print(json.dumps({k: v for k, v in report.items() if k != "failures"}, indent=1))
    return report


@pytest.mark.slow
def test_training_resumes_on_another_node_from_its_checkpoint(tmp_path: Path, tiny_model: Path):
    r = run_scenario("train", tmp_path, tiny_model, timeout_s=480)
    assert r["exit_code"] == 0 and r["job_status"] == "SUCCEEDED", r
    assert r["resumed_on_node"] != r["lost_node"]
    # Resumed inside the attempt (Ray Train's FailureConfig), from a checkpoint, not from step 0.
    assert r["attempts"] == 1
    assert len(r["resumed_from_step"]) == 1
    step = r["resumed_from_step"][0]
    assert 0 < step < r["max_steps"] and step % r["checkpoint_every_steps"] == 0
    assert r["global_step"] == r["max_steps"]
    assert r["registrations"] == 1  # one model version for the job, from the resumed run


@pytest.mark.slow
def test_serving_comes_back_on_another_node_and_no_request_hangs(tmp_path: Path, tiny_model: Path):
    r = run_scenario("serve", tmp_path, tiny_model, timeout_s=540)
    assert r["ok_before_loss"] > 0
    assert r["timed_out"] == 0  # none waited out the client's (generous) timeout
    assert r["failed_with_openai_error_body"] == r["failed"], r["failures"]
    assert r["recovery_s"] is not None  # a request sent after the loss was answered
    assert r["replica_now_on"] == [r["standby_node"]]
