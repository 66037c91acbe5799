"""The OpenAI endpoint end to end: the studio application (ingress + Router + one ModelDeployment
of the tiny model) under real Ray Serve with its HTTP proxy on a free port, a real SQLite registry
and a real API key, called with the official ``openai`` client.

The package's shared stack (tests/deployments/serving_stack.py), with one replica. Registry
changes (register, promote) must be answered within a few seconds without a redeploy. Bad requests
and bad registry versions get OpenAI-shaped 4xx answers and leave the model serving as before;
tool calls and JSON-schema outputs come back in OpenAI's shape and parse against their schemas.
"""

from __future__ import annotations

import time

import pytest

from ray import serve

from tests.deployments.conftest import make_adapter

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow
CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def studio(serving_stack, tiny_model_dir):
    # One replica: test_client_disconnect asks the ModelDeployment's handle for the engine's
    # stats, which must reach the replica that holds the stream.
    stack = serving_stack.ensure(replicas=1)
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.key, max_retries=0,
                           timeout=60)
    yield {"client": client, "port": int(stack.url.rsplit(":", 1)[1]), "key": stack.key,
           "settings": stack.settings, "base_dir": str(tiny_model_dir)}
    stack.hide_from_leak_watch()


def _chat(client, model: str, **kw):
    return client.chat.completions.create(**{"model": model, "messages": CHAT, "max_tokens": 12,
                                             "temperature": 0, **kw})


def _version(client, model: str) -> tuple[str, str]:
    """(studio_model_version header, chat text)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=CHAT, max_tokens=12, temperature=0)
    body = raw.parse()
    assert body.model_extra["studio_model_version"] == raw.headers["x-studio-model-version"]
    return raw.headers["x-studio-model-version"], body.choices[0].message.content


def test_base_model_chat_completions_stream_and_errors(studio):
    client = studio["client"]
    assert "tiny" in [m.id for m in client.models.list().data]

    chat = _chat(client, "tiny")
    text = chat.choices[0].message.content
    assert text and chat.usage.completion_tokens > 0
    assert chat.model_extra["studio_model_version"] == "tiny"
    stream = _chat(client, "tiny", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text

    completion = client.completions.create(model="tiny", prompt="reverse: 6 0 4 8", max_tokens=12,
                                           temperature=0)
    assert completion.choices[0].text and completion.usage.total_tokens > 0
    streamed = client.completions.create(model="tiny", prompt="reverse: 6 0 4 8", max_tokens=12,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text

    with pytest.raises(openai.NotFoundError, match="nope.*GET /v1/models"):
        _chat(client, "nope")
    wrong = openai.OpenAI(base_url=str(client.base_url), api_key="sk-not-a-studio-key",
                          max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid or revoked"):
        _chat(wrong, "tiny")


def test_missing_key_and_malformed_json_are_openai_errors(studio):
    import httpx

    url = f"http://127.0.0.1:{studio['port']}/v1/chat/completions"
    r = httpx.post(url, json={"model": "tiny", "messages": CHAT})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert "missing API key" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"{not json",
                   headers={"Authorization": f"Bearer {studio['key']}",
                            "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400
    assert "not valid JSON" in r.json()["error"]["message"]


def _register(settings, name: str, adapter_dir, base: str, champion: bool = False) -> str:
    from studio.registry.versions import promote, register_version
    from studio.store.db import session_scope

    with session_scope(settings.db_url) as session:
        mv = register_version(session, name=name, base_model=base, method="sft",
                              adapter_type="lora", uri=str(adapter_dir))
        ref = f"{mv.name}@{mv.version}"
        if champion:
            promote(session, ref)
    return ref


def _eventually(check, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, openai.NotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_registry_versions_are_served_without_a_redeploy(studio, tmp_path):
    client, settings, base = studio["client"], studio["settings"], studio["base_dir"]
    _, base_text = _version(client, "tiny")
    v1 = make_adapter(base, tmp_path / "v1", seed=1)
    v2 = make_adapter(base, tmp_path / "v2", seed=2)

    assert _register(settings, "rev", v1, base) == "rev@1"
    started = time.monotonic()

    def listed_and_answering():
        ids = [m.id for m in client.models.list().data]
        assert "rev" in ids and "rev@1" in ids
        return _version(client, "rev")

    version, v1_text = _eventually(listed_and_answering)
    print(f"rev@1 answered {time.monotonic() - started:.1f} s after registration")
    assert version == "rev@1" and v1_text != base_text

    # A streamed answer names its version in the header, and the chunks use the public name.
    with client.chat.completions.with_streaming_response.create(
            model="rev", messages=CHAT, max_tokens=12, temperature=0, stream=True) as raw:
        assert raw.headers["x-studio-model-version"] == "rev@1"
        chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == v1_text
    assert {c.model for c in chunks} == {"rev@1"}

    assert _register(settings, "rev", v2, base, champion=True) == "rev@2"
    started = time.monotonic()
    version, v2_text = _eventually(lambda: _expect(_version(client, "rev"), "rev@2"))
    print(f"rev@2 (champion) answered {time.monotonic() - started:.1f} s after promotion")
    assert v2_text not in (v1_text, base_text)
    assert _version(client, "rev@1") == ("rev@1", v1_text)
    assert _version(client, "rev@2") == ("rev@2", v2_text)
    with pytest.raises(openai.NotFoundError, match="rev@9"):
        _chat(client, "rev@9")


def test_client_disconnect_mid_stream_aborts_the_engine_request(studio):
    import httpx

    from studio.serving.config import deployment_name

    model = serve.get_deployment_handle(deployment_name("tiny"), app_name="studio")
    # Long enough to be still running when the client leaves: 8 sequences (STUDIO_MAX_N) × 480
    # tokens.
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 480, "n": 8, "temperature": 1.0,
            "seed": 1}
    started = time.monotonic()
    full = studio["client"].completions.create(**body, extra_body={"ignore_eos": True})
    full_s = time.monotonic() - started
    assert full.usage.completion_tokens == 8 * 480
    with httpx.stream("POST", f"http://127.0.0.1:{studio['port']}/v1/completions",
                      json={**body, "ignore_eos": True, "stream": True}, timeout=30,
                      headers={"Authorization": f"Bearer {studio['key']}"}) as r:
        assert r.status_code == 200 and r.headers["x-studio-model-version"] == "tiny"
        running = 0
        for i, _ in enumerate(r.iter_text()):
            running = model.stats.remote().result()["unfinished_requests"]  # one per sequence
            if running or i > 200:
                break
        assert running > 0, "the request ended before the client could leave it"
    closed = time.monotonic()  # leaving the block closes the connection mid-stream

    def aborted():
        assert model.stats.remote().result()["unfinished_requests"] == 0

    _eventually(aborted, timeout=full_s / 2)
    print(f"engine request aborted {time.monotonic() - closed:.2f} s after the client left "
          f"(the whole request takes {full_s:.1f} s)")


def _expect(result: tuple[str, str], version: str) -> tuple[str, str]:
    assert result[0] == version, result
    return result


def _status(call) -> tuple[int, str]:
    try:
        call()
    except openai.APIStatusError as e:
        return e.status_code, e.message
    raise AssertionError("the request was accepted")


def test_bad_requests_are_openai_4xx_and_the_model_keeps_serving(studio):
    client = studio["client"]
    before = _chat(client, "tiny").choices[0].message.content
    long_text = " ".join(["hello world"] * 400)  # ~800 tokens > max_model_len 512

    def chat(**kw):
        return lambda: client.chat.completions.create(**{"model": "tiny", "messages": CHAT,
                                                         "max_tokens": 4, **kw})

    cases = {
        "max_tokens 0": chat(max_tokens=0),
        "max_tokens -1": chat(max_tokens=-1),
        "max_tokens above the context": chat(max_tokens=10_000),
        "empty messages": chat(messages=[]),
        "wrong role": chat(messages=[{"role": "wizard", "content": "hi"}]),
        "10 000 stop strings": chat(stop=[f"s{i}" for i in range(10_000)]),
        "chat prompt longer than the context": chat(messages=[{"role": "user",
                                                               "content": long_text}]),
        "completion prompt longer than the context": lambda: client.completions.create(
            model="tiny", prompt=long_text, max_tokens=4),
    }
    for case, call in cases.items():
        status, message = _status(call)
        print(f"{case}: {status} {message[:160]}")
        assert status == 400, (case, status, message)
        assert message, case
    assert "wizard" in _status(cases["wrong role"])[1]
    assert "10000" in _status(cases["10 000 stop strings"])[1]
    assert _chat(client, "tiny").choices[0].message.content == before


def test_bad_registry_versions_fail_clearly_and_nothing_else(studio, tmp_path, other_base_adapter):
    client, settings, base = studio["client"], studio["settings"], studio["base_dir"]
    good = make_adapter(base, tmp_path / "good", seed=5)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in good.iterdir():
        data = f.read_bytes()
        (corrupt / f.name).write_bytes(data[:len(data) // 2] if f.suffix == ".safetensors"
                                       else data)
    _register(settings, "fine", good, base)
    _, fine_text = _eventually(lambda: _version(client, "fine"))
    _, base_text = _version(client, "tiny")

    expected = {"missing": (tmp_path / "gone", "does not exist"),
                "corrupt": (corrupt, "unreadable or truncated"),
                "alien": (other_base_adapter, "does not fit base model")}
    for name, (uri, problem) in expected.items():
        ref = _register(settings, name, uri, base)
        status, message = _eventually(lambda: _status(lambda: _chat(client, ref)))
        print(f"{name}: {status} {message[:200]}")
        assert 400 <= status < 500 and f"{ref}' cannot be served" in message, (status, message)
        assert problem in message, message
    assert _version(client, "tiny") == ("tiny", base_text)
    assert _version(client, "fine") == ("fine@1", fine_text)


# No `strict`: a forced call (required, named) is guided by the tool's schema all the same.
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"], "additionalProperties": False}}}]
ANSWER_SCHEMA = {"type": "object", "properties": {
    "answer": {"type": "integer", "minimum": 0, "maximum": 99},
    "sure": {"type": "boolean"},
    "colour": {"enum": ["red", "green", "blue"]},
    "note": {"type": "string", "maxLength": 8}},
    "required": ["answer", "sure", "colour", "note"], "additionalProperties": False}


def _streamed_tool_calls(stream) -> list[tuple[str, str]]:
    """(name, arguments) per call, joined from OpenAI's `delta.tool_calls` fragments."""
    calls: dict[int, list[str]] = {}
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.index not in calls:  # OpenAI's shape: a call's first delta names it
                    assert call.id and call.type == "function" and call.function.name, call
                name, args = calls.setdefault(call.index, ["", ""])[:2]
                calls[call.index] = [name + (call.function.name or ""),
                                     args + (call.function.arguments or "")]
    return [tuple(calls[i]) for i in sorted(calls)]


def test_response_format_json_schema_json_object_and_parse_with_pydantic(studio):
    """Guided JSON from the untrained model, whole and streamed, with no client-side help: the
    engine's grammar leaves it no free whitespace to loop on."""
    import json

    import jsonschema
    from pydantic import BaseModel, Field

    client = studio["client"]
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA,
                                                  "strict": True}}
    whole = _chat(client, "tiny", response_format=fmt, max_tokens=120)
    text = whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "stop", text
    jsonschema.validate(json.loads(text), ANSWER_SCHEMA)  # even from an untrained model
    streamed = _chat(client, "tiny", response_format=fmt, max_tokens=120, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text

    # json_object: any object. Its numbers and strings are unbounded, and the untrained model
    # writes digits until max_tokens (`{"":-3333…`), but no free whitespace (it wrote `{\r\r\r…`
    # before); a bias towards `}` lets it close the object, which then parses.
    anything = _chat(client, "tiny", response_format={"type": "json_object"}, max_tokens=60)
    text = anything.choices[0].message.content
    print("json_object:", anything.choices[0].finish_reason, repr(text))
    assert text.startswith("{") and not set(text) & set("\r\n\t"), text
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(studio["base_dir"])
    close = {str(i): 100 for i in range(len(tok)) if tok.decode([i]) == "}"}
    closed = _chat(client, "tiny", response_format={"type": "json_object"}, max_tokens=60,
                   logit_bias=close).choices[0]
    assert closed.finish_reason == "stop" and isinstance(json.loads(closed.message.content), dict)

    class Forecast(BaseModel):
        city: str = Field(max_length=12)
        days: int = Field(ge=1, le=7)
        sunny: bool

    parsed = client.chat.completions.parse(model="tiny", messages=CHAT, response_format=Forecast,
                                           max_tokens=120, temperature=0)
    forecast = parsed.choices[0].message.parsed
    print("parse():", forecast)
    assert isinstance(forecast, Forecast) and 1 <= forecast.days <= 7 and len(forecast.city) <= 12


def test_forced_tool_calls_follow_the_tool_schema_whole_and_streamed(studio):
    """tool_choice required or named, tools without `strict`, no logit_bias or other help: the
    arguments validate against the tool's schema, and streamed calls arrive as OpenAI deltas that
    join into the same call."""
    import json

    import jsonschema

    client = studio["client"]
    schema = TOOLS[0]["function"]["parameters"]
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in (named, "required"):
        # One call for required: an untrained model might otherwise list calls until max_tokens.
        one = {"parallel_tool_calls": False} if choice == "required" else {}
        answer = _chat(client, "tiny", tools=TOOLS, tool_choice=choice, max_tokens=120,
                       **one).choices[0]
        print(f"tool_choice={choice}: {answer.finish_reason} {answer.message}")
        assert answer.finish_reason == ("tool_calls" if choice == "required" else "stop")
        [call] = answer.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather" and call.id
        jsonschema.validate(json.loads(call.function.arguments), schema)
        stream = _chat(client, "tiny", tools=TOOLS, tool_choice=choice, max_tokens=120,
                       stream=True, **one)
        [(name, args)] = _streamed_tool_calls(stream)
        assert name == "get_weather"
        assert json.loads(args) == json.loads(call.function.arguments)

    # tool_choice auto: the model's own text goes through vLLM's hermes parser. An untrained
    # model would not call a tool by itself, so its output is guided into a Hermes tool call
    # (vLLM joins this regex with its own tool-call grammar: either way a Hermes call).
    hermes = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}' \
             '</tool_call>'
    literal = "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in hermes)
    guided = {"structured_outputs": {"regex": literal}}
    auto = _chat(client, "tiny", tools=TOOLS, max_tokens=120, extra_body=guided).choices[0]
    print(f"tool_choice=auto, guided: {auto.finish_reason} {auto.message}")
    assert auto.finish_reason == "tool_calls", auto
    [call] = auto.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), schema)
    stream = _chat(client, "tiny", tools=TOOLS, max_tokens=120, extra_body=guided, stream=True)
    [(name, args)] = _streamed_tool_calls(stream)
    assert name == "get_weather" and json.loads(args) == json.loads(call.function.arguments)


def test_schemas_that_cannot_guide_are_400s_naming_the_place(studio):
    client = studio["client"]
    bad = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"city": {"type": "strnig"}}}}}]
    with pytest.raises(openai.BadRequestError, match="not a valid JSON Schema") as e:
        _chat(client, "tiny", tools=bad)
    assert "properties/city/type" in str(e.value) and e.value.param == \
        "tools[0].function.parameters"
    unsupported = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}}}
    started = time.perf_counter()
    with pytest.raises(openai.BadRequestError, match="'multipleOf' at properties/n") as e:
        _chat(client, "tiny", response_format=unsupported)
    print(f"unsupported keyword: 400 in {time.perf_counter() - started:.2f} s: {e.value}")
    assert e.value.param == "response_format.json_schema.schema"
    assert _chat(client, "tiny").choices[0].message.content  # still serving
