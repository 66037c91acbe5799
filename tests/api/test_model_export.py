"""Adapters leave the studio: download (a streamed .tar.gz with a model card), merge (a full model
in safetensors) and push (any fsspec URI), through HTTP and the CLI, on the tiny model with a LoRA
adapter whose B matrices are random (a fresh one's are zero, which would merge to the base)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import select

from studio.access import claim_name
from studio.data.snapshots import resolve_snapshot
from studio.jobs.status import create_job
from studio.keys import create_key
from studio.models.tiny import make_tiny
from studio.registry.versions import register_version
from studio.store.artifacts import ArtifactStore
from studio.store.db import session_scope
from studio.store.models import ApiKey, EvalScore
from tests.api.checks import assert_problem, bearer
from tests.cli_invoke import invoke
from tests.jobs.inputs import ingest_datasets

pytestmark = [pytest.mark.slow, pytest.mark.parallel]  # models load in seconds; no Ray, no engine
PROMPTS = ["reverse: 1 2 3", "reverse: 9 0 4 7", "hello"]
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # loads models: once is enough


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("export-tiny") / "tiny")


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny)),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("export-adapter") / "adapter"
    model.save_pretrained(str(out))
    return out


def greedy(model, tokenizer_dir) -> list[list[int]]:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    out = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = tok(p, return_tensors="pt")
            out.append(model.generate(**ids, max_new_tokens=12, do_sample=False)[0].tolist())
    return out


def base_plus_adapter(tiny, adapter_dir, quantized: bool = False):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32) if quantized else None
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny), quantization_config=quant),
                                     str(adapter_dir))


@pytest.fixture
def registered(settings, tmp_path, tiny, adapter, user_key) -> dict:
    """``rev@1``: the adapter in the artifact store, from a job on digits@1, scored by one eval;
    ``rev@2`` (same adapter, QLoRA), ``rev@3`` (registered as full weights); ``gone@1`` (files
    deleted), ``half@1`` (no adapter_config.json).
    Every name is alice's."""
    ingest_datasets(settings, tmp_path / "data")
    store = ArtifactStore(settings.artifacts)
    uri = store.put_dir(adapter, "models/rev/1-1")
    half = store.put_dir(adapter, "models/half/1-1")
    Path(half, "adapter_config.json").unlink()
    with session_scope(settings.db_url) as s:
        alice = s.scalars(select(ApiKey.id).where(ApiKey.name == "alice")).one()
        for name in ("rev", "gone", "half"):
            claim_name(s, "model", name, alice)
        snap = resolve_snapshot(s, "digits").snapshot
        job = create_job(s, name="rev", spec={"method": "sft", "base_model": str(tiny), "hyper": {"learning_rate": 0.003}},
                         max_retries=0, submitted_by="alice")
        ev = create_job(s, name="eval", kind="eval", spec={"dataset": "digits@1"}, max_retries=0, submitted_by="alice")
        common = {"base_model": str(tiny), "method": "sft"}
        register_version(s, name="rev", uri=uri, adapter_type="lora", dataset_snapshot_id=snap.id, job_id=job.id,
                         metrics={"exact_match": 0.75}, **common)
        register_version(s, name="rev", uri=uri, adapter_type="qlora", **common)
        register_version(s, name="gone", uri=str(tmp_path / "deleted"), adapter_type="lora", **common)
        register_version(s, name="half", uri=half, adapter_type="lora", **common)
        register_version(s, name="rev", uri=uri, adapter_type="full", **common)  # rev@3: nothing to merge
        s.add_all([EvalScore(job_id=ev.id, datapoint=i, model="rev@1", scorer="exact_match", score=float(i % 2))
                   for i in range(4)])
        return {"uri": uri, "snapshot_id": snap.id, "eval_id": ev.id}


def untar(data: bytes, dest: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


@sqlite_only
def test_download_loads_with_peft_and_answers_like_the_registry_folder(client, cli_env, user_key, registered,
                                                                       tiny, tmp_path):
    r = client.get("/api/models/rev@1/download", headers=bearer(user_key))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gzip"
    assert r.headers["content-disposition"] == 'attachment; filename="rev-v1.tar.gz"'
    folder = untar(r.content, tmp_path / "got") / "rev-v1"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert (folder / "adapter_model.safetensors").read_bytes() == Path(registered["uri"], "adapter_model.safetensors").read_bytes()
    card = (folder / "README.md").read_text()
    for part in (str(tiny), registered["snapshot_id"], "prompt_completion, 20 rows", "learning_rate: 0.003",
                 "| exact_match | 0.75 |", f"| {registered['eval_id']} | digits@1 | exact_match | 0.5000 | 4 |"):
        assert part in card, card
    assert greedy(base_plus_adapter(tiny, folder), tiny) == greedy(base_plus_adapter(tiny, registered["uri"]), tiny)

    code, out = invoke("models", "download", "rev@1", "--out", str(tmp_path / "cli.tar.gz"))
    assert code == 0, out
    cli = untar((tmp_path / "cli.tar.gz").read_bytes(), tmp_path / "cli") / "rev-v1"
    assert (cli / "adapter_model.safetensors").read_bytes() == (folder / "adapter_model.safetensors").read_bytes()
    code, out = invoke("models", "download", "rev@1", "--out", str(tmp_path / "cli.tar.gz"))
    assert code == 1 and "already exists" in out


@pytest.fixture
def cli_env(settings, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(settings.home))
    monkeypatch.setenv("STUDIO_DATABASE_URL", settings.db_url)
    monkeypatch.delenv("STUDIO_ARTIFACTS_URI", raising=False)
    return settings


@pytest.fixture
def lesser_keys(settings) -> dict[str, str]:
    with session_scope(settings.db_url) as s:
        return {"service": create_key(s, "app", "service")[0], "bob": create_key(s, "bob", "user")[0]}


def test_missing_files_are_404_naming_why_and_lesser_keys_are_refused(client, cli_env, user_key, registered,
                                                                     lesser_keys, tmp_path):
    assert_problem(client.get("/api/models/gone@1/download", headers=bearer(user_key)), 404,
                   "the files of gone@1 are gone", "does not exist")
    assert_problem(client.get("/api/models/half@1/download", headers=bearer(user_key)), 404,
                   "no adapter_config.json")
    assert_problem(client.get("/api/models/rev@9/download", headers=bearer(user_key)), 404, "no version 9")
    assert_problem(client.post("/api/models/gone@1/merge", json={}, headers=bearer(user_key)), 404, "are gone")
    assert_problem(client.post("/api/models/rev@3/merge", json={}, headers=bearer(user_key)), 400,
                   "holds full weights", "nothing to merge")
    code, out = invoke("models", "download", "gone@1", "--out", str(tmp_path / "x.tar.gz"))
    assert code == 1 and "are gone" in out and not (tmp_path / "x.tar.gz").exists()
    # A service key reads no catalog; another user reads it but merges only its own names.
    assert client.get("/api/models/rev@1/download", headers=bearer(lesser_keys["service"])).status_code == 403
    assert client.post("/api/models/rev@1/merge", json={}, headers=bearer(lesser_keys["service"])).status_code == 403
    assert_problem(client.post("/api/models/rev@1/merge", json={}, headers=bearer(lesser_keys["bob"])), 403,
                   "belongs to another key")
    assert client.get("/api/models/rev@1/download", headers=bearer(lesser_keys["bob"])).status_code == 200


@sqlite_only
def test_merge_gives_the_adapters_greedy_tokens_over_cli_and_http(client, cli_env, user_key, admin_key, registered,
                                                                  tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    settings = cli_env
    code, out = invoke("models", "merge", "rev@1", "--out", str(tmp_path / "merged"))
    assert code == 0, out
    merged = tmp_path / "merged"
    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "README.md"} <= names, names
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    assert greedy(AutoModelForCausalLM.from_pretrained(str(merged)), merged) == greedy(
        base_plus_adapter(tiny, registered["uri"]), tiny)
    code, out = invoke("models", "merge", "rev@1", "--out", str(merged))
    assert code == 1 and "never overwrites" in out

    r = client.post("/api/models/rev@1/merge", json={"base_name": "rev-merged"}, headers=bearer(user_key))
    assert r.status_code == 200, r.text
    body = r.json()
    as_base = settings.models_dir / "rev-merged"
    assert body["base_model"] == "rev-merged" and body["path"] == str(as_base)
    assert body["uri"] == ArtifactStore(settings.artifacts).uri("merged/rev/1")
    for folder in (Path(body["uri"]), as_base):
        assert (folder / "model.safetensors").read_bytes() == (merged / "model.safetensors").read_bytes()
    # The store's copy is reused; the base name is taken; a name that is no folder name is a 422.
    assert_problem(client.post("/api/models/rev@1/merge", json={"base_name": "rev-merged"}, headers=bearer(admin_key)),
                   409, "already exists")
    assert client.post("/api/models/rev@1/merge", json={"base_name": "../etc"}, headers=bearer(admin_key)).status_code == 422
    assert client.post("/api/models/rev@1/merge", json={}, headers=bearer(admin_key)).json()["base_model"] is None
    again = client.post("/api/models/rev@1/merge", json={"base_name": "rev-merged-2"}, headers=bearer(admin_key))
    assert again.status_code == 200, again.text
    assert _tree(Path(again.json()["path"])) == _tree(as_base)  # from the store's copy, not merged again


@sqlite_only
def test_a_qlora_adapter_merges_onto_the_dequantized_base(cli_env, registered, tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    code, out = invoke("models", "merge", "rev@2", "--out", str(tmp_path / "qmerged"))
    assert code == 0, out
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "qmerged"))
    assert greedy(merged, tiny) == greedy(base_plus_adapter(tiny, registered["uri"], quantized=True), tiny)
    assert "dequantized 4-bit base" in (tmp_path / "qmerged" / "README.md").read_text()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@sqlite_only
def test_push_to_a_local_folder_and_to_s3_and_an_unwritable_uri_leaves_nothing(cli_env, registered, tmp_path):
    dest = tmp_path / "out" / "rev-1"
    code, out = invoke("models", "push", "rev@1", str(dest))
    assert code == 0, out
    pushed = _tree(dest)
    assert sorted(pushed) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert pushed["adapter_model.safetensors"] == Path(registered["uri"], "adapter_model.safetensors").read_bytes()
    assert b"rev@1" in pushed["README.md"]
    code, out = invoke("models", "push", "rev@1", str(dest))
    assert code == 1 and "already exists" in out and _tree(dest) == pushed

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out = invoke("models", "push", "rev@1", str(blocker / "rev-1"))
    assert code == 1 and f"cannot write {blocker / 'rev-1'}" in out, out
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []

    from tests.cluster.s3_server import local_s3, new_bucket

    with local_s3():
        import boto3

        bucket = new_bucket()
        code, out = invoke("models", "push", "rev@1", f"s3://{bucket}/adapters/rev-1")
        assert code == 0, out
        client = boto3.client("s3")
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))
        assert keys == ["adapters/rev-1/README.md", "adapters/rev-1/adapter_config.json",
                        "adapters/rev-1/adapter_model.safetensors"]
        body = client.get_object(Bucket=bucket, Key="adapters/rev-1/adapter_model.safetensors")["Body"].read()
        assert body == pushed["adapter_model.safetensors"]
        code, out = invoke("models", "push", "rev@1", "s3://no-such-bucket-studio/adapters/rev-1")
        assert code == 1 and "cannot write s3://no-such-bucket-studio/adapters/rev-1" in out, out
        assert "no-such-bucket-studio" not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    shutil.rmtree(dest)
