"""An adapter that leaves the studio answers like the studio serves it: on the shared tiny-model
stack (tests/stacks.py: `studio up`, vLLM serving the tiny model with LoRA), a LoRA adapter with
random B matrices (tests/deployments/test_vllm_engine.py shows vLLM and PEFT agree on those) is
registered, downloaded over HTTP, loaded with ``PeftModel.from_pretrained`` and merged over HTTP;
transformers' greedy answers from the downloaded folder and from the merged model equal `/v1`'s for
``NAME@N`` (the official openai client, temperature 0). No training run: the stack is all it costs."""

from __future__ import annotations

import io
import tarfile

import httpx
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PROMPTS = ["reverse: 6 0 4 8", "reverse: 1 2 3", "reverse: 9 7 5 3 1", "reverse: 4 4 0", "reverse: 2 8 1 7"]


@pytest.fixture(scope="module")
def studio(tiny_stack, tmp_path_factory):
    from studio.registry.versions import register_version
    from studio.settings import StudioSettings
    from studio.store.db import init_db, session_scope
    from tests.deployments.conftest import make_adapter

    model = tiny_stack.tiny_model()  # what the stack serves; the adapter is made before the engine starts
    adapter = make_adapter(model, tmp_path_factory.mktemp("export-e2e") / "adapter", seed=11)
    stack = tiny_stack.ensure()
    settings = StudioSettings(home=stack.home, database_url=None, artifacts_uri=None, mlflow_uri=None,
                              redis_url=None, admin_key=None)
    init_db(settings.db_url)
    with session_scope(settings.db_url) as s:
        ref = register_version(s, name="exported", base_model=str(model), method="sft", adapter_type="lora",
                               uri=str(adapter))
        ref = f"{ref.name}@{ref.version}"
    auth = {"Authorization": f"Bearer {stack.admin}"}
    with httpx.Client(base_url=stack.base, timeout=120, headers=auth) as api:
        yield {"api": api, "ref": ref, "model": model, "settings": settings,
               "v1": openai.OpenAI(base_url=f"{stack.base}/v1", api_key=stack.admin, max_retries=0)}


def served(studio, model: str) -> list[str]:
    return [studio["v1"].chat.completions.create(
        model=model, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=16,
    ).choices[0].message.content for p in PROMPTS]


def same(texts: list[str]) -> list[str]:
    # At max_tokens the last token may be half of a UTF-8 character (random weights write bytes):
    # vLLM's detokenizer holds it back, transformers' decode shows U+FFFD.
    return [t.rstrip("\ufffd").strip() for t in texts]


def test_downloaded_and_merged_adapter_answer_like_v1(studio, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.train.evaluate import generate_greedy, load_for_generation

    ref, name = studio["ref"], studio["ref"].replace("@", "-v")
    v1 = served(studio, ref)
    assert v1 != served(studio, "tiny"), "the adapter changed nothing"

    r = studio["api"].get(f"/api/models/{ref}/download")
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    tokenizer = AutoTokenizer.from_pretrained(str(studio["model"]))
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(studio["model"])), str(tmp_path / name))
    assert same(generate_greedy(peft.eval(), tokenizer, messages)) == same(v1)

    r = studio["api"].post(f"/api/models/{ref}/merge", json={"base_name": "exported-merged"})
    assert r.status_code == 200, r.text
    merged = r.json()["path"]
    assert merged == str(studio["settings"].models_dir / "exported-merged")
    model, tok = load_for_generation(merged, merged)
    assert same(generate_greedy(model, tok, messages)) == same(v1)
