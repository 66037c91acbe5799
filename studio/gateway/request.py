"""What a caller may send to ``/v1`` and ``/gateway/v1``: one request model per endpoint, shared
by the studio's OpenAI endpoint (its own engines) and the gateway (engines and external providers).

A field is one of three kinds:

* **OpenAI fields** (``OPENAI_CHAT_FIELDS``, ``OPENAI_COMPLETION_FIELDS``): sampling, stop, seed,
  tools, formats, ``stream_options``, ``user``. Forwarded to every model: the studio's engines and,
  through LiteLLM, external providers.
* **Engine fields** (``ENGINE_FIELDS``): vLLM's sampling and decoding extensions that the studio's
  engines accept (``top_k``, ``min_p``, ``structured_outputs``…). Forwarded to studio-served models
  only; an external group answers 400 naming them.
* **Anything else is refused** (400, naming every such field). LiteLLM reads its call options —
  ``api_base``, ``api_key``, ``headers``, ``extra_body``, ``mock_response``, ``num_retries``,
  ``fallbacks``, ``metadata``, cost fields — from the same keyword arguments as the sampling
  fields, and vLLM reads engine-internal ones (``request_id``, ``priority``, ``chat_template``,
  ``kv_transfer_params``) from the same body: a field the studio does not know could steer the
  server's outbound call or another caller's share of the engine.

Static bounds live on the models (``model`` ≤ 256 characters, ``stop`` ≤ 4 strings of ≤ 256, at
most 2,048 messages…); the two an operator tunes (``n``, ``max_tokens``) are :class:`RequestCaps`
(``STUDIO_MAX_N``, ``STUDIO_MAX_TOKENS``), checked by :func:`check_caps`. The list is documented
in docs/security.md, "Outbound calls".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from studio.errors import StudioError

MAX_MODEL_CHARS = 256
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_MESSAGES = 2048
MAX_PROMPTS = 256  # prompts in one legacy completions call (each answered n times)
MAX_PROMPT_CHARS = 1_000_000
MAX_TOOLS = 128
MAX_LOGIT_BIAS = 1024
MAX_TOKEN_IDS = 1024
MAX_LOGPROBS = 20
INT64 = 2**63 - 1

Endpoint = Literal["chat", "completions"]
Stop = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=INT64)]], Field(max_length=MAX_TOKEN_IDS)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = Field(default=None, description="Send a last chunk with token "
                                       "usage (always on through the gateway, which counts it).")
    continuous_usage_stats: bool | None = Field(default=None, description="vLLM: usage on "
                                                "every chunk.")


class _Common(BaseModel):
    """The fields both endpoints take; ``model`` is the only required one."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS, description="A model group, a "
                       "served base id, a registry name, name@N or an experiment alias.")
    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling "
                                      "temperature (OpenAI's range 0-2).")
    top_p: float | None = Field(default=None, ge=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate; at "
                                   "most STUDIO_MAX_TOKENS.")
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP)] | None = Field(
        default=None, description=f"Up to {MAX_STOP} stop strings of {MAX_STOP_CHARS} characters.")
    seed: int | None = Field(default=None, ge=-INT64 - 1, le=INT64, description="Sampling seed "
                             "(a 64-bit integer).")
    n: int | None = Field(default=None, ge=1, description="Choices to generate; at most "
                          "STUDIO_MAX_N.")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, description="OpenAI's "
                                           "presence penalty.")
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, description="OpenAI's "
                                            "frequency penalty.")
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS, description="Token id → bias (-100..100), at "
        f"most {MAX_LOGIT_BIAS} entries.")
    stream: bool | None = Field(default=None, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = Field(default=None, description="Stream options.")
    user: str | None = Field(default=None, max_length=256, description="The end user: labels "
                             "the call and keeps an experiment's arm sticky.")
    # vLLM's extensions (ENGINE_FIELDS): studio-served models only.
    top_k: int | None = Field(default=None, ge=-1, description="vLLM: sample from the k most "
                              "likely tokens (-1 or 0: all).")
    min_p: float | None = Field(default=None, ge=0, le=1, description="vLLM: minimum probability "
                                "relative to the most likely token.")
    repetition_penalty: float | None = Field(default=None, gt=0, le=10, description="vLLM: "
                                             "repetition penalty (1: none).")
    min_tokens: int | None = Field(default=None, ge=0, description="vLLM: fewest tokens to "
                                   "generate before a stop may end the answer.")
    ignore_eos: bool | None = Field(default=None, description="vLLM: keep generating past the "
                                    "end-of-sequence token.")
    skip_special_tokens: bool | None = Field(default=None, description="vLLM: drop special "
                                             "tokens from the text.")
    spaces_between_special_tokens: bool | None = Field(default=None, description="vLLM: "
                                                       "detokenizer spacing.")
    include_stop_str_in_output: bool | None = Field(default=None, description="vLLM: keep the "
                                                    "stop string in the text.")
    stop_token_ids: TokenIds | None = Field(default=None, description="vLLM: token ids that end "
                                            "the answer.")
    structured_outputs: dict[str, Any] | None = Field(default=None, description="vLLM: guided "
                                                      "decoding (json, regex, choice, grammar…).")
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, description="vLLM: "
                                        "log-probabilities of the prompt tokens.")
    add_special_tokens: bool | None = Field(default=None, description="vLLM: add the "
                                            "tokenizer's special tokens to the prompt.")

    def fields(self) -> dict[str, Any]:
        """The fields the caller set, as plain JSON values: what is forwarded."""
        out = {name: getattr(self, name) for name in self.model_fields_set}
        if self.stream_options is not None:
            out["stream_options"] = self.stream_options.model_dump(exclude_none=True)
        return out

    def engine_fields(self) -> list[str]:
        return sorted(n for n in self.model_fields_set if n in ENGINE_FIELDS)


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions`` and ``/gateway/v1/chat/completions``."""

    messages: list[dict[str, Any]] = Field(max_length=MAX_MESSAGES, description="The "
                                           f"conversation, at most {MAX_MESSAGES} messages.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="OpenAI's newer "
                                              "name for max_tokens; at most STUDIO_MAX_TOKENS.")
    logprobs: bool | None = Field(default=None, description="Return log-probabilities.")
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, description="Most "
                                     "likely tokens per position with logprobs.")
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS,
                                               description="Functions the model may call.")
    tool_choice: str | dict[str, Any] | None = Field(default=None, description="none, auto, "
                                                     "required, or a named function.")
    parallel_tool_calls: bool | None = Field(default=None, description="Allow several tool "
                                             "calls in one answer.")
    response_format: dict[str, Any] | None = Field(default=None, description="text, "
                                                   "json_object or json_schema.")
    # vLLM's chat extensions
    echo: bool | None = Field(default=None, description="vLLM: start the answer with the last "
                              "message when it is the assistant's.")
    add_generation_prompt: bool | None = Field(default=None, description="vLLM: end the "
                                               "rendered prompt with the assistant's turn.")
    continue_final_message: bool | None = Field(default=None, description="vLLM: continue the "
                                                "last (assistant) message.")
    chat_template_kwargs: dict[str, Any] | None = Field(default=None, description="vLLM: "
                                                        "variables for the model's chat template.")


Prompt = (Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
          | Annotated[list[Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]],
                      Field(min_length=1, max_length=MAX_PROMPTS)]
          | TokenIds
          | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)])


class CompletionRequest(_Common):
    """``POST /v1/completions`` and ``/gateway/v1/completions`` (OpenAI's legacy endpoint)."""

    prompt: Prompt = Field(description=f"A string, up to {MAX_PROMPTS} strings, or token ids.")
    echo: bool | None = Field(default=None, description="Return the prompt before the answer.")
    suffix: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS, description="Text "
                               "after the completion (models that support insertion).")
    best_of: int | None = Field(default=None, ge=1, description="Candidates generated per "
                                "prompt, the best returned; at most STUDIO_MAX_N.")
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, description="Log-"
                                 "probabilities of the most likely tokens per position.")


REQUEST_MODELS: dict[str, type[_Common]] = {"chat": ChatCompletionRequest,
                                            "completions": CompletionRequest}
ENGINE_FIELDS = frozenset({
    "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "skip_special_tokens",
    "spaces_between_special_tokens", "include_stop_str_in_output", "stop_token_ids",
    "structured_outputs", "prompt_logprobs", "add_special_tokens", "add_generation_prompt",
    "continue_final_message", "chat_template_kwargs"})
OPENAI_CHAT_FIELDS = frozenset(ChatCompletionRequest.model_fields) - ENGINE_FIELDS - {"echo"}
OPENAI_COMPLETION_FIELDS = frozenset(CompletionRequest.model_fields) - ENGINE_FIELDS
# Chat's `echo` is vLLM's; the legacy endpoint's is OpenAI's.
CHAT_ENGINE_FIELDS = ENGINE_FIELDS | {"echo"}
_TYPE_TAGS = {"str", "int", "float", "bool"}
_HINTS = {"guided_json": "structured_outputs: {json: ...}",
          "guided_regex": "structured_outputs: {regex: ...}",
          "guided_choice": "structured_outputs: {choice: [...]}",
          "guided_grammar": "structured_outputs: {grammar: ...}"}


@dataclass(frozen=True)
class RequestCaps:
    """The bounds an operator tunes (settings ``max_n`` / ``max_tokens``)."""

    max_n: int = 8
    max_tokens: int = 8192

    @classmethod
    def of(cls, settings: Any) -> RequestCaps:
        return cls(settings.max_n, settings.max_tokens)


def check_caps(req: _Common, caps: RequestCaps) -> None:
    """A 400 naming the field and the setting when a request asks for more than the caps."""
    for field, cap, setting in (("n", caps.max_n, "STUDIO_MAX_N"),
                                ("best_of", caps.max_n, "STUDIO_MAX_N"),
                                ("max_tokens", caps.max_tokens, "STUDIO_MAX_TOKENS"),
                                ("max_completion_tokens", caps.max_tokens, "STUDIO_MAX_TOKENS")):
        value = getattr(req, field, None)
        if value is not None and value > cap:
            raise StudioError(f"`{field}` is {value}, above this studio's cap of {cap}",
                              f"ask for at most {cap}, or have the operator raise {setting}")


def parse_request(endpoint: str, body: Any, caps: RequestCaps) -> _Common:
    """The validated request, or one 400 naming every field that is wrong or not accepted."""
    if not isinstance(body, dict):
        raise StudioError("the request body must be a JSON object", 'send {"model": ..., ...}')
    try:
        req = REQUEST_MODELS[endpoint].model_validate(body)
    except ValidationError as e:
        raise invalid_request(e.errors(), endpoint) from None
    check_caps(req, caps)
    return req


def invalid_request(errors: list[dict[str, Any]], endpoint: str) -> StudioError:
    """One 400 for pydantic's (or FastAPI's) errors: the fields not accepted, all named, with
    why; else each wrong field and pydantic's word on it."""
    # Union members add their type to the location ("stop.list[constrained-str]"): keep names.
    locs = [tuple(p for p in e.get("loc", ()) if p != "body" and (
        isinstance(p, int) or (str(p).isidentifier() and p not in _TYPE_TAGS))) for e in errors]
    if any(e.get("type") == "json_invalid" for e in errors):
        return StudioError("the request body is not valid JSON",
                           "send a JSON object with Content-Type: application/json")
    if any(not loc and e.get("type") in ("model_attributes_type", "dict_type", "model_type")
           for loc, e in zip(locs, errors, strict=True)):
        return StudioError("the request body must be a JSON object", 'send {"model": ..., ...}')
    unknown = sorted({str(loc[0]) for loc, e in zip(locs, errors, strict=True)
                      if e.get("type") == "extra_forbidden" and len(loc) == 1})
    if unknown:
        hints = [f"{name} → {_HINTS[name]}" for name in unknown if name in _HINTS]
        where = "/v1 or /gateway/v1 " + ("chat/completions" if endpoint == "chat"
                                          else "completions")
        return StudioError(
            f"fields not accepted by {where}: {', '.join(unknown)}. The studio chooses the host, "
            "key, headers, retries and mocks of every model call; a request carries only OpenAI's "
            "sampling, stop, tool and format fields, and vLLM's sampling extensions for studio "
            "models (docs/security.md, 'Outbound calls')",
            "drop those fields" + (f" ({'; '.join(hints)})" if hints else ""))
    named = list(dict.fromkeys(f"{'.'.join(map(str, loc)) or '(body)'}: {e.get('msg')}"
                               for loc, e in zip(locs, errors, strict=True)))
    return StudioError(f"invalid request: {'; '.join(named[:8])}",
                       "correct the fields named (OpenAI's request shape)")
