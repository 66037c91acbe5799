"""The production storage path end to end, against a loopback S3 server: with only
``STUDIO_ARTIFACTS_URI=s3://…`` and the standard AWS variables set, the dataset snapshot, the Ray Train
checkpoints, the MLflow artifacts and the registered adapter all live in the bucket, and the code a
serving replica runs before its engine loads an adapter (``fetch_adapter`` + the checks
``ModelDeployment`` applies) brings the registered version back into a local cache that PEFT loads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studio.models.adapters import check_adapter_fits, fetch_adapter, inspect_adapter
from studio.registry.versions import get_version
from studio.settings import StudioSettings
from studio.store import db as store_db
from studio.store.db import session_scope
from studio.store.models import DatasetSnapshot, Job
from studio.train.toy_data import ingest_toy_datasets

from .s3_server import local_s3, new_bucket

pytestmark = [pytest.mark.slow, pytest.mark.no_engine]
REPO = Path(__file__).resolve().parents[2]


def s3_keys(uri_prefix: str) -> list[str]:
    import boto3

    bucket, _, prefix = uri_prefix.removeprefix("s3://").partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """One real training job (the entrypoint, a private local Ray) with the artifact store on S3."""
    from studio.models.tiny import make_tiny

    tmp = tmp_path_factory.mktemp("s3-train")
    with local_s3():
        bucket = new_bucket()
        settings = StudioSettings(home=tmp / "project" / ".studio", database_url=None,
                                  artifacts_uri=f"s3://{bucket}/studio", mlflow_uri=None, redis_url=None,
                                  admin_key=None)
        store_db.init_db(settings.db_url)
        settings.models_dir.mkdir(parents=True)
        make_tiny(settings.models_dir / "tiny")
        ingest_toy_datasets(settings, tmp / "data")

        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_") and k != "RAY_ADDRESS"}
        env.update(STUDIO_HOME=str(settings.home_abs), STUDIO_ARTIFACTS_URI=settings.artifacts,
                   PYTHONUNBUFFERED="1")
        log = tmp / "entrypoint.log"
        cwd = tmp / "elsewhere"  # workers run in another cwd anyway; the driver does here too
        cwd.mkdir()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "studio.train.run", "--recipe",
                 str(REPO / "configs" / "train" / "sft_reverse_tiny.yaml"),
                 "hyper.max_steps=4", "hyper.logging_steps=2", "checkpoint.every_steps=2",
                 "resources.num_workers=1", "eval_after=null"],
                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=600)  # a hang guard, not a speed check
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the private Ray the driver started
            except ProcessLookupError:
                pass
        output = log.read_text(errors="replace")
        assert proc.returncode == 0, "\n".join(output.splitlines()[-60:])
        yield settings, tmp
        store_db.get_engine(settings.db_url).dispose()
        store_db.get_engine.cache_clear()


def test_everything_the_job_wrote_is_in_the_bucket(trained):
    settings, _ = trained
    root = settings.artifacts
    with session_scope(settings.db_url) as s:
        job = s.query(Job).one()
        mv = get_version(s, job.result["model"])
        snapshots = [snap.uri for snap in s.query(DatasetSnapshot)]
        checkpoint_uri, model_uri = job.checkpoint_uri, mv.uri
        assert job.status == "SUCCEEDED", job.error
    assert snapshots and all(u.startswith(f"{root}/datasets/") for u in snapshots)
    assert checkpoint_uri.startswith(f"{root}/jobs/{job.id}/ray/")
    assert any(k.endswith("final/adapter_model.safetensors") for k in s3_keys(checkpoint_uri))
    assert model_uri.startswith(f"{root}/models/reverse-tiny/")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {k.rsplit("/", 1)[1] for k in s3_keys(model_uri)}
    mlflow_keys = s3_keys(f"{root}/mlflow/")
    assert any(k.endswith("adapter/adapter_model.safetensors") for k in mlflow_keys)
    assert not (settings.home_abs / "artifacts").exists(), "with an s3:// store nothing lands on local disk"


def test_a_serving_replica_fetches_the_registered_adapter_and_peft_loads_it(trained):
    """What ModelDeployment.load_adapter does before the engine sees an adapter — fetch the version's
    URI into the replica's cache, check the files and that they fit the base — then PEFT loads it and
    the adapter changes the model's output (it is the trained one, not an empty shell)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings, tmp = trained
    with session_scope(settings.db_url) as s:
        mv = get_version(s, "reverse-tiny@1")
        uri, base = mv.uri, mv.base_model
    assert uri.startswith("s3://")

    local = fetch_adapter(uri, tmp / "replica" / "cache" / "adapters")
    info = inspect_adapter(local)
    check_adapter_fits(info, base)
    assert info.rank == 32  # the recipe's lora.r
    lora_b = {k: float(v.float().norm()) for k, v in load_file(str(local / "adapter_model.safetensors")).items()
              if "lora_B" in k}
    assert lora_b and all(n > 0 for n in lora_b.values()), "the fetched adapter was never trained"

    tok = AutoTokenizer.from_pretrained(base)
    ids = tok("reverse: 1 2 3 4", return_tensors="pt").input_ids
    base_model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        base_logits = base_model(ids).logits
    tuned = PeftModel.from_pretrained(base_model, str(local))
    with torch.no_grad():
        tuned_logits = tuned(ids).logits
    assert not torch.allclose(base_logits, tuned_logits)
