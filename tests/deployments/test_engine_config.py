"""Engine and deployment configs, the adapter LRU's policy, and the adapter-file checks — no engine
runs here (the adapters are real PEFT ones on the tiny model)."""

from __future__ import annotations

import asyncio

import fsspec
import pytest

from deployments.engines.adapter_lru import AdapterLRU
from deployments.engines.base import cuda_available
from deployments.model import build_model_deployment
from studio.serving.config import EngineConfig, ModelDeploymentConfig, deployment_name
from studio.errors import Conflict, NotFound, StudioError
from studio.models.adapters import check_adapter_fits, fetch_adapter, inspect_adapter
from studio.recipes import validate_spec


def test_every_config_field_is_described():
    for cls in (EngineConfig, ModelDeploymentConfig):
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description"


def test_engine_config_forbids_unknown_fields():
    with pytest.raises(StudioError, match="unknown field"):
        validate_spec(EngineConfig, {"model": "m", "max_lora": 2}, "engine config")


def test_kv_cache_space_is_whole_gib():
    # vLLM parses VLLM_CPU_KVCACHE_SPACE as an int: 0.5 would fail minutes later in the replica.
    with pytest.raises(StudioError, match="kv_cache_space_gib"):
        validate_spec(EngineConfig, {"model": "m", "kv_cache_space_gib": 0.5}, "engine config")
    assert EngineConfig(model="m", kv_cache_space_gib=2).kv_cache_space_gib == 2


@pytest.mark.skipif(cuda_available(), reason="this machine has a CUDA GPU")
def test_sglang_on_a_cpu_machine_fails_when_the_deployment_is_built():
    # Reading the config probes nothing (a CPU laptop may write a GPU cluster's config)...
    cfg = validate_spec(ModelDeploymentConfig, {"engine": {"model": "m", "engine": "sglang"}, "num_gpus": 1}, "x")
    assert EngineConfig(model="m", engine="sglang").engine == "sglang"
    # ...building the deployment here does, before any replica waits for a GPU.
    with pytest.raises(StudioError) as err:
        build_model_deployment(cfg)
    message = str(err.value)
    assert "SGLang needs a CUDA GPU" in message
    assert "engine: vllm" in message and "make setup GPU=1 SGLANG=1" in message


def test_deployment_names_are_per_base_model_and_serve_safe():
    a, b = deployment_name("/models/tiny"), deployment_name("/other/tiny")
    assert a != b and "/" not in a and a.startswith("Model-tiny-")


def _recording_lru(capacity: int):
    events: list[str] = []

    async def load(adapter_id, path):
        events.append(f"load {adapter_id}")

    async def unload(adapter_id):
        events.append(f"unload {adapter_id}")

    return AdapterLRU(capacity, load, unload), events


def test_lru_evicts_least_recently_used_idle_adapter():
    async def scenario():
        lru, events = _recording_lru(2)
        await lru.add("a@1", "/a")
        await lru.add("b@1", "/b")
        release_a = await lru.acquire("a@1")  # a in use and most recent: b is the victim
        await lru.add("c@1", "/c")
        assert list(lru.loaded) == ["a@1", "c@1"] and events[-2:] == ["unload b@1", "load c@1"]
        release_a()
        (await lru.acquire("b@1"))()  # reload on demand evicts a (now idle, least recent)
        assert list(lru.loaded) == ["c@1", "b@1"]
        assert (await lru.acquire("base-model")) is not None  # not an adapter: passes through
        with pytest.raises(Conflict, match="new version"):
            await lru.add("c@1", "/elsewhere")
        await lru.remove("c@1")
        with pytest.raises(NotFound):
            await lru.remove("c@1")
        return lru, events

    lru, events = asyncio.run(scenario())
    assert lru.stats()["evictions"] == 2 and events[-1] == "unload c@1"


def test_busy_adapters_are_not_evicted_and_the_set_shrinks_after():
    async def scenario():
        lru, _ = _recording_lru(1)
        await lru.add("a@1", "/a")
        release = await lru.acquire("a@1")
        await lru.add("b@1", "/b")  # a is busy: both loaded for now
        assert set(lru.loaded) == {"a@1", "b@1"}
        release()
        await asyncio.sleep(0)  # the shrink runs as a task
        await asyncio.sleep(0)
        return lru

    assert list(asyncio.run(scenario()).loaded) == ["b@1"]


def test_adapter_checks(tiny_model_dir, adapters, other_base_adapter, tmp_path):
    info = inspect_adapter(adapters["rev@1"])
    assert info.rank == 8 and info.base_model == str(tiny_model_dir)
    check_adapter_fits(info, str(tiny_model_dir))
    with pytest.raises(StudioError, match="does not fit base model"):
        check_adapter_fits(inspect_adapter(other_base_adapter), str(tiny_model_dir))
    # Without local base weights (a hub id) the trained-on name decides.
    with pytest.raises(StudioError, match="was trained on"):
        check_adapter_fits(info, "someorg/another-model")

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in adapters["rev@1"].iterdir():
        data = f.read_bytes()
        (truncated / f.name).write_bytes(data[:-8] if f.suffix == ".safetensors" else data)
    with pytest.raises(StudioError, match="unreadable or truncated.*Fix: re-export"):
        inspect_adapter(truncated)
    (truncated / "adapter_config.json").write_text("{not json")
    with pytest.raises(StudioError, match="not valid PEFT JSON"):
        inspect_adapter(truncated)


def test_fetch_adapter_from_any_fsspec_uri(adapters, tmp_path):
    fs = fsspec.filesystem("memory")
    for f in adapters["rev@2"].iterdir():
        fs.pipe(f"/store/rev2/{f.name}", f.read_bytes())
    local = fetch_adapter("memory://store/rev2", tmp_path / "cache")
    assert inspect_adapter(local).rank == 8
    assert fetch_adapter("memory://store/rev2", tmp_path / "cache") == local  # cached by uri
    with pytest.raises(NotFound, match="does not exist"):
        fetch_adapter("memory://store/missing", tmp_path / "cache")


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_tool_and_structured_output_settings_are_checked_at_config_time():
    with pytest.raises(StudioError, match="enable_auto_tool_choice needs tool_call_parser"):
        validate_spec(EngineConfig, {"model": "m", "enable_auto_tool_choice": True}, "engine")
    with pytest.raises(StudioError, match="xgrammar or guidance"):
        validate_spec(EngineConfig, {"model": "m", "structured_outputs_backend": "outlines",
                                     "structured_outputs_compact": True}, "engine")
    ok = EngineConfig(model="m", tool_call_parser="hermes", enable_auto_tool_choice=True)
    assert ok.structured_outputs_backend == "auto"
    # Compact guided JSON by default, where the backend has it (auto then means xgrammar).
    assert ok.compact_json and VLLM_ARGS(ok).structured_outputs_config.backend == "xgrammar"
    assert VLLM_ARGS(ok).structured_outputs_config.disable_any_whitespace
    loose = EngineConfig(model="m", structured_outputs_compact=False)
    assert not VLLM_ARGS(loose).structured_outputs_config.disable_any_whitespace
    assert VLLM_ARGS(loose).structured_outputs_config.backend == "auto"
    outlines = EngineConfig(model="m", structured_outputs_backend="outlines")
    assert not outlines.compact_json  # not an error: the default only applies where it can


def VLLM_ARGS(config: EngineConfig):
    from deployments.engines.vllm_engine import VLLMEngine

    return VLLMEngine(config).engine_args()


def test_forced_tool_calls_are_guided_by_the_schema_with_bounded_whitespace():
    """What vLLM's grammar for a forced Hermes tool call accepts, before and after the engine's
    two changes: arguments pinned to the tool's schema (not any JSON value such as `true`), at
    most one whitespace character between JSON tokens (not tabs until max_tokens)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.parser.parser_manager import ParserManager
    from xgrammar import Grammar
    from xgrammar.testing import _is_grammar_accept_string

    from deployments.engines.base import pin_forced_tool_arguments
    from deployments.engines.vllm_engine import bounded_tool_whitespace
    from studio.models.tiny import TinyModelSpec, build_tokenizer

    tok = build_tokenizer(TinyModelSpec(corpus_lines=200))
    parser_cls = ParserManager.get_parser(tool_parser_name="hermes", enable_auto_tools=True)
    named = {**CHAT_BODY, "tools": TOOLS,
             "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}

    def grammar(body, cls=parser_cls) -> Grammar:
        request = ChatCompletionRequest.model_validate(body)
        adjusted = cls(tok, request.tools).adjust_request(request)
        return Grammar.from_structural_tag(adjusted.structured_outputs.structural_tag)

    call = '<tool_call>{{"name": "get_weather", "arguments": {}}}</tool_call>'
    compact, spaced = call.format('{"city":"Oslo"}'), call.format('{"city": "Oslo"}')
    anything, tabs = call.format("true"), call.format('{\t\t\t"city":"Oslo"}')
    as_sent = grammar(named)  # vLLM alone: the name is guided, the arguments are any JSON
    assert all(_is_grammar_accept_string(as_sent, s) for s in (compact, anything, tabs))
    for body in (named, {**named, "tool_choice": "required"}):
        pinned = grammar(pin_forced_tool_arguments(body), bounded_tool_whitespace(parser_cls))
        assert _is_grammar_accept_string(pinned, compact)
        assert _is_grammar_accept_string(pinned, spaced)
        assert not _is_grammar_accept_string(pinned, anything)
        assert not _is_grammar_accept_string(pinned, tabs)
    # An explicit strict: false is the caller's choice; auto is not forced.
    loose = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": False}}]
    assert pin_forced_tool_arguments({**named, "tools": loose})["tools"] == loose
    auto = {**CHAT_BODY, "tools": TOOLS, "tool_choice": "auto"}
    assert pin_forced_tool_arguments(auto) is auto


def test_requests_the_engine_would_mishandle_are_refused_before_it_runs():
    from deployments.engines.base import check_request
    from deployments.engines.vllm_engine import VLLMEngine

    config = EngineConfig(model="m")
    assert check_request(config, "chat", {**CHAT_BODY, "tools": TOOLS, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}) is None

    bad_tool = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"city": {"type": "strnig"}}}}}]
    err = check_request(config, "chat", {**CHAT_BODY, "tools": bad_tool})["error"]
    assert err["code"] == 400 and err["param"] == "tools[0].function.parameters"
    assert "not a valid JSON Schema" in err["message"] and "properties/city/type" in err["message"]
    err = check_request(config, "chat", {**CHAT_BODY, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"minLength": -1}}}})["error"]
    assert err["param"] == "response_format.json_schema.schema"
    err = check_request(config, "chat", {**CHAT_BODY, "messages": [
        {"role": "wizard", "content": "hi"}]})["error"]
    assert err["param"] == "messages[0].role" and "'wizard'" in err["message"]
    err = check_request(config, "completions", {"model": "m", "prompt": "x",
                                                "stop": ["s"] * 10_000})["error"]
    assert err["param"] == "stop" and "10000" in err["message"]
    err = check_request(config, "chat", {**CHAT_BODY, "max_tokens": 0})["error"]
    assert err["param"] == "max_tokens" and "at least 1" in err["message"]
    err = check_request(config, "chat", {**CHAT_BODY, "max_tokens": 600}, 512)["error"]
    assert err["param"] == "max_tokens" and "context length" in err["message"]
    assert check_request(config, "chat", {**CHAT_BODY, "max_tokens": 512}, 512) is None
    err = check_request(config, "chat", {**CHAT_BODY, "messages": []})["error"]
    assert err["param"] == "messages" and "empty" in err["message"]
    # Tool choices the engine is not set up for name the engine setting, not vLLM's CLI flag.
    err = check_request(config, "chat", {**CHAT_BODY, "tools": TOOLS,
                                         "tool_choice": "required"})["error"]
    assert err["param"] == "tool_choice" and "engine.tool_call_parser" in err["message"]
    parser_only = EngineConfig(model="m", tool_call_parser="hermes")
    assert check_request(parser_only, "chat", {**CHAT_BODY, "tools": TOOLS,
                                               "tool_choice": "required"}) is None
    err = check_request(parser_only, "chat", {**CHAT_BODY, "tools": TOOLS,
                                              "tool_choice": "auto"})["error"]
    assert "engine.enable_auto_tool_choice" in err["message"]

    # An engine with guided decoding off says so, naming the setting (before it even starts).
    no_guide = VLLMEngine(EngineConfig(model="m", structured_outputs_backend="none",
                                       tool_call_parser="hermes"))
    for extra in ({"response_format": {"type": "json_object"}},
                  {"tools": TOOLS, "tool_choice": "required"},
                  {"tools": TOOLS, "tool_choice": {"type": "function",
                                                   "function": {"name": "get_weather"}}}):
        result = asyncio.run(no_guide.generate("chat", {**CHAT_BODY, **extra}))
        assert result["error"]["code"] == 400, extra
        assert "structured_outputs_backend" in result["error"]["message"]
    plain = asyncio.run(no_guide.generate("chat", {**CHAT_BODY, "tools": TOOLS}))
    assert plain["error"]["code"] == 503  # not refused: only the unstarted engine stops it


def test_schema_keywords_xgrammar_cannot_enforce_are_a_400_naming_them():
    from deployments.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(EngineConfig(model="m", tool_call_parser="hermes"))  # compact: xgrammar

    def answer(schema, **extra):
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"v": schema}, "required": ["v"]}}}
        return asyncio.run(engine.generate("chat", {**CHAT_BODY, "response_format": fmt,
                                                    **extra}))["error"]

    for keyword, schema in (("multipleOf", {"type": "integer", "multipleOf": 3}),
                            ("uniqueItems", {"type": "array", "uniqueItems": True}),
                            ("pattern", {"type": "string", "pattern": "[a-z]+",
                                         "maxLength": 4})):
        err = answer(schema)
        assert err["code"] == 400 and err["param"] == "response_format.json_schema.schema"
        assert f"'{keyword}' at properties/v" in err["message"], err["message"]
    # Accepted by vLLM, ignored by xgrammar: the answer would look guided and not be.
    for keyword, schema in (("not", {"type": "integer", "not": {"const": 3}}),
                            ("if", {"type": "integer", "if": {"minimum": 0},
                                    "then": {"maximum": 5}}),
                            ("$ref", {"$ref": "https://example.com/v.json"})):
        err = answer(schema)
        assert f"'{keyword}' at properties/v" in err["message"], err["message"]
    assert answer({"type": "integer", "maximum": 3})["code"] == 503  # fine: only unstarted
    # A property may be called like a keyword; a local $ref is followed.
    named_like = {"type": "object", "properties": {"not": {"type": "string", "maxLength": 3}}}
    assert answer(named_like)["code"] == 503
    local = {"$defs": {"n": {"type": "integer"}}, "type": "object",
             "properties": {"m": {"$ref": "#/$defs/n"}}}
    assert answer(local)["code"] == 503
    # A forced tool call guides its arguments, so their schema is checked the same way.
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "number", "multipleOf": 2}}}}}]
    err = asyncio.run(engine.generate("chat", {**CHAT_BODY, "tools": tools,
                                               "tool_choice": "required"}))["error"]
    assert err["param"] == "tools[0].function.parameters" and "'multipleOf'" in err["message"]
    auto = asyncio.run(engine.generate("chat", {**CHAT_BODY, "tools": tools}))
    assert auto["error"]["code"] == 503  # not guided, not checked


def test_tiny_chat_template_renders_tools_and_leaves_plain_chat_as_it_was():
    from studio.models.tiny import TinyModelSpec, build_tokenizer

    tok = build_tokenizer(TinyModelSpec(corpus_lines=200))
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "x"}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nx<|im_end|>\n"
        "<|im_start|>assistant\n")
    called = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None,
              "tool_calls": [{"id": "c1", "type": "function", "function": {
                  "name": "get_weather", "arguments": {"city": "Paris"}}}]},
              {"role": "tool", "content": "sunny"}]
    text = tok.apply_chat_template(called, tools=TOOLS, tokenize=False,
                                   add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n# Tools\n<tools>\n{\"name\": \"get_weather\"")
    assert ('<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}</tool_call><|im_end|>\n<|im_start|>tool\nsunny<|im_end|>\n') in text


def test_a_serve_config_model_path_follows_studio_home_and_names_no_other_variable(tmp_path, monkeypatch):
    """deployments.app reads `models:` paths with the recipes' rule (studio.settings.expand_home):
    a leading ${STUDIO_HOME} / $STUDIO_HOME is this studio's home, a hub id is left alone, any other
    variable is an error naming the field rather than a literal `$FOO` folder."""
    from deployments.app import resolve_model

    home = tmp_path / "home"
    (home / "models" / "m").mkdir(parents=True)
    monkeypatch.setenv("STUDIO_HOME", str(home))

    def model_of(path: str) -> str:
        return resolve_model(ModelDeploymentConfig(engine=EngineConfig(model=path))).engine.model

    assert model_of("${STUDIO_HOME}/models/m") == str(home / "models" / "m")
    assert model_of("$STUDIO_HOME/models/m") == str(home / "models" / "m")
    assert model_of("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    with pytest.raises(StudioError, match=r"engine.model: .*names the variable \$HOME"):
        model_of("$HOME/models/m")
