"""The OpenAI wire format: request validation, error bodies, completion and chunk objects, and the response models
the OpenAPI schema documents.

Requests are validated strictly (no "yes" -> True coercion) so a wrong type is a 400 naming the field, as the OpenAI
API does. Unknown fields are accepted and ignored, because clients add new optional fields faster than servers.
Integer fields take integral JSON numbers written with a fraction (`2.0`): JSON has one number type, and JSON Schema
(which the published OpenAPI schema is) counts 2.0 as an integer.
"""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema

from fslm import __version__ as FSLM_VERSION
from fslm.io import JsonError, loads_json


class APIError(Exception):
    """An error the client caused or must retry; rendered as `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx, as OpenAI's API writes it; the OpenAPI schema documents it for each route."""

    error: ErrorDetail


ERROR_STATUSES = {
    400: "the request is malformed (the message and `param` name the field)",
    401: "missing or wrong API key (only when the server requires one)",
    404: "unknown model or trace",
    408: "the request body did not arrive within the server's body timeout",
    413: "request body too large",
    415: "the body is not declared as JSON (Content-Type must be application/json)",
    429: "queue full: retry after the Retry-After header",
    503: "no answer within the request timeout, or the server is shutting down (Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each error status it can answer with, all carrying ErrorResponse (always as
    application/json: app._document corrects FastAPI, which would use the route's own media type)."""
    return {status: {"model": ErrorResponse, "description": ERROR_STATUSES[status]} for status in statuses}


ECHO_CHARS = 80


def shorten(value: Any) -> str:
    """repr() of a client's value for an error message, cut to ECHO_CHARS: a 1 MB `model` string must not come back
    in full in the 404 (nor a 4000-digit max_tokens in the 400)."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else f"{text[: ECHO_CHARS - 15]}... ({len(text)} chars)"


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


def _integral(value: Any) -> Any:
    """2.0 -> 2 for integer fields; anything else (2.5, 1e308, "2", true) is left for strict validation to refuse.
    Only floats that hold their integer exactly (|x| <= 2**53) count, so 1e308 stays a float and is refused."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_integral)]
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
# No tool can run on an fslm stack: an empty list is harmless, anything in it is refused (see parse_request).
NoTools = Annotated[
    list[Any] | None,
    WithJsonSchema(
        {"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}], "description": "not supported: omit or []"}
    ),
]


class ContentPart(_Model):
    type: str = Field(description="only 'text' parts reach a stack; others in a user/assistant message are a 400")
    text: str | None = None


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self, index: int) -> str:
        """The message as plain text; only text parts can reach a text-only stack."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for j, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise APIError(
                    400,
                    f"messages[{index}].content[{j}]: only text parts are supported (got type {shorten(part.type)})",
                    param=f"messages.{index}.content.{j}.type",
                    code="unsupported_content",
                )
            pieces.append(part.text)
        return "\n".join(pieces)


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    model: str | None = Field(None, description="the served model id (GET /v1/models); any other is a 404")
    messages: list[ChatMessage] = Field(
        ..., min_length=1, description="the last must be a user message with text: the question (else 400)"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    n: JsonInt = Field(1, ge=1, le=1)
    # Accepted for compatibility; each stage's decoding is set by the stack config (see docs/serve.md).
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: JsonInt | None = None
    user: str | None = None
    tools: NoTools = None
    fslm_trace: bool | None = None  # fslm extension: include the stage trace (default: the server's setting)

    @property
    def new_token_cap(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_request(body: bytes) -> ChatCompletionRequest:
    """Bytes -> validated request, or an APIError whose message and `param` name the bad field."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(
            400, f"request body is not UTF-8 (byte {err.start}: 0x{body[err.start]:02x})", code="invalid_json"
        ) from None
    try:  # strict: nesting depth, lone surrogates ("\ud800") and 4300-digit numbers are errors, not crashes
        data = loads_json(text, parse_constant=_no_constants)
    except JsonError as err:
        raise APIError(400, f"request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err) from None
    if request.tools:
        raise APIError(
            400, "tools/function calling is not supported by fslm stacks", param="tools", code="unsupported_parameter"
        )
    return request


def _no_constants(name: str) -> Any:
    """json.loads would read NaN, Infinity and -Infinity (not JSON); a request holding them is refused."""
    raise ValueError(f"{name} is not a JSON number")


def _validation_error(err: ValidationError) -> APIError:
    problem = err.errors()[0]
    loc = ".".join(str(p) for p in problem["loc"]) or "(body)"
    got = problem.get("input")
    got_text = "" if problem["type"] == "missing" or isinstance(got, (dict, list)) else f" (got {shorten(got)})"
    msg = problem["msg"]
    if loc == "messages" and problem["type"] == "too_short":
        msg = "messages must contain at least one message"
    more = f" (+{err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    return APIError(
        400,
        f"{loc}: {msg}{got_text}{more}",
        param=loc,
        code="invalid_value" if problem["type"] != "missing" else "missing_field",
    )


class _Doc(BaseModel):
    """A response shape for the OpenAPI document only (handlers build plain dicts, e.g. completion_object); extra
    fields are allowed, so a later field never breaks a client generated from the schema."""

    model_config = ConfigDict(extra="allow")


class Usage(_Doc):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class StageTrace(_Doc):
    stage: str
    input: str
    output: str
    tokens_in: int
    tokens_out: int
    seconds: float
    adapter: str | None
    finish_reason: str


class TraceRecord(_Doc):
    id: str
    created: float
    model: str
    prompt: str
    answer: str
    finish_reason: str
    stages: list[StageTrace]
    tokens_in: int
    tokens_out: int
    batch_size: int
    queue_seconds: float
    stack_seconds: float
    latency_seconds: float


class AssistantMessage(_Doc):
    role: Literal["assistant"]
    content: str


class Choice(_Doc):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: None


class ChatCompletion(_Doc):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: Usage
    fslm_trace: TraceRecord | None = None


class ModelCard(_Doc):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    fslm_stages: list[str]
    fslm_base_model: str


class ModelList(_Doc):
    object: Literal["list"]
    data: list[ModelCard]


class TraceSummary(_Doc):
    id: str
    created: float
    model: str
    prompt: str
    answer: str
    latency_seconds: float
    batch_size: int
    tokens_out: int
    kind: str = Field("serve", description="serve, run or generate: the run log holds CLI runs too")
    log_id: int | None = Field(None, description="the run log's id (None: kept in memory only)")
    stack: str | None = None
    error: str | None = Field(None, description="why the run failed, if it did")


class TraceList(_Doc):
    object: Literal["list"]
    data: list[TraceSummary]
    persistent: bool
    has_more: bool = Field(False, description="an older page exists (ask again with a larger offset)")


class StageName(_Doc):
    name: str
    label: str


class Health(_Doc):
    status: Literal["ok", "worker_down"]
    model: str
    stages: list[StageName]
    queue_depth: int
    queue_capacity: int
    max_batch: int
    auth: bool


class Delta(_Doc):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Doc):
    index: int
    delta: Delta
    finish_reason: str | None
    logprobs: None


class ChatCompletionChunk(_Doc):
    """One streamed event: the first carries `fslm_event` "queued", the last with choices has `finish_reason` and
    `fslm_trace`, and with stream_options.include_usage a final one has no choices and `usage`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    fslm_event: dict[str, Any] | None = None
    fslm_trace: TraceRecord | None = None


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


# One server-sent event, as OpenAPI 3.1 reads `schema` under text/event-stream: its `data` is a chunk, an error that
# happened after the stream opened, or the closing "[DONE]".
SSE_RESPONSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {
                    "anyOf": [
                        {"const": "[DONE]"},
                        {
                            "contentMediaType": "application/json",
                            "contentSchema": {"anyOf": [_ref(ChatCompletionChunk), _ref(ErrorResponse)]},
                        },
                    ]
                }
            },
        }
    }
}
DOCUMENTED_MODELS = (ChatCompletionChunk,)  # referred to only from SSE_RESPONSE: app._document adds it


def ok_response(model: type[BaseModel], description: str, **content: Any) -> dict[int | str, dict[str, Any]]:
    """`responses=` entry for a route's 200 (documentation only: the handler's dict is sent as built)."""
    entry: dict[str, Any] = {"model": model, "description": description}
    if content:
        entry["content"] = content
    return {200: entry}


def completion_object(cid: str, model: str, answer: str, finish_reason: str, usage: dict, trace: dict | None) -> dict:
    obj = {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": f"fslm-{FSLM_VERSION}",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage,
    }
    if trace is not None:
        obj["fslm_trace"] = trace
    return obj


def chunk_object(cid: str, model: str, delta: dict, finish_reason: str | None = None, **extra: Any) -> dict:
    obj = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": f"fslm-{FSLM_VERSION}",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    obj.update({k: v for k, v in extra.items() if v is not None})
    return obj


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


_PIECE = re.compile(r"\s+|\S+\s*")


def answer_pieces(text: str) -> list[str]:
    """Word-sized pieces that join back to exactly `text` (the streamed deltas)."""
    return _PIECE.findall(text)
