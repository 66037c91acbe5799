"""Node loss on a multi-node Ray on this machine (issue 24 item 8), through ``scripts/node_loss.py all``,
whose JSON report the figures in docs/operations.md ("Node loss") come from. The script runs once for
the module, both scenarios on one cluster (serve, then train), and each test asserts its part:

- the node under one of a running SFT job's two Ray Train workers goes: Ray Train starts the whole
  worker group again on the nodes left, from the job's latest checkpoint, inside the attempt; the
  step counter continues and the job registers its model once, saying where it resumed (this also
  covers what tests/train/test_worker_kill_resume.py did: a killed worker replaced in the attempt);
- the node under the tiny model's serving replica goes while 8 clients stream through ``/v1``:
  Serve starts the replica on the other node; every request that failed got an OpenAI error body,
  none ran into the client's timeout, and answers come again.

The script runs in a process group of its own, killed at the end whatever happens.
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
def node_loss(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``scripts/node_loss.py all``'s report: serve, then train, on one cluster (~2.5 min)."""
    from studio.models.tiny import make_tiny

    tmp_path = tmp_path_factory.mktemp("node_loss")
    model = make_tiny(tmp_path / "tiny")
    out = tmp_path / "node-loss.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_") and k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "node_loss.py"), "all", "--out", str(out),
                             "--model", str(model), "--work", str(tmp_path / "work")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    timeout_s = 600
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"scripts/node_loss.py all ran over {timeout_s} s:\n{output.decode(errors='replace')[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its group still alive
        except ProcessLookupError:
            pass
    text = output.decode(errors="replace")
    assert out.exists(), text[-4000:]
    return {"report": json.loads(out.read_text()), "output": text, "returncode": proc.returncode}


def scenario(node_loss: dict, which: str) -> dict:
    report = node_loss["report"].get(which)
    assert report is not None and "error" not in report, f"{report}\n{node_loss['output'][-4000:]}"
    print(json.dumps({k: v for k, v in report.items() if k != "failures"}, indent=1))
    return report


@pytest.mark.slow
def test_training_resumes_on_other_nodes_from_its_checkpoint(node_loss: dict):
    r = scenario(node_loss, "train")
    assert r["exit_code"] == 0 and r["job_status"] == "SUCCEEDED", r
    # Two workers, a node each, both Ray Train workers (Ray's process title); one node goes.
    assert r["workers"] == 2 and len(set(r["worker_nodes_before"])) == 2 and r["workers_titled_RayTrainWorker"]
    assert r["lost_node"] in r["worker_nodes_before"]
    # The whole group again, on the nodes left (the survivor's too).
    assert len(r["resumed_on_nodes"]) == 2 and r["lost_node"] not in r["resumed_on_nodes"], r
    # Resumed inside the attempt (Ray Train's FailureConfig), not by a job retry ...
    assert r["attempts"] == 1
    # ... from a reported checkpoint, not from step 0.
    assert len(r["resumed_from_step"]) == 1
    step = r["resumed_from_step"][0]
    assert 0 < step < r["max_steps"] and step % r["checkpoint_every_steps"] == 0
    # The step counter continued: after the resume, logging picks up right after the checkpoint.
    after = r["loss_steps_after_resume"]
    assert after and after[0] == step + r["logging_steps"] and after[-1] == r["max_steps"], r
    assert r["global_step"] == r["max_steps"]
    # One model version for the job, the resumed run's: its final step is the planned one and it
    # says where it resumed.
    assert r["registrations"] == 1
    assert r["registered_metrics"] == {"global_step": r["max_steps"], "resumed_from_step": step}


@pytest.mark.slow
def test_serving_comes_back_on_another_node_and_no_request_hangs(node_loss: dict):
    r = scenario(node_loss, "serve")
    assert r["ok_before_loss"] > 0
    assert r["timed_out"] == 0  # none waited out the client's (generous) timeout
    assert r["failed_with_openai_error_body"] == r["failed"], r["failures"]
    assert r["recovery_s"] is not None  # a request sent after the loss was answered
    assert r["replica_now_on"] == [r["standby_node"]]
