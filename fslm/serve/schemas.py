"""The OpenAI wire format of requests: validation (chat, and the sampling fields both routes share) and error bodies.
Responses are built in fslm.serve.shapes; their OpenAPI models are in fslm.serve.docmodels.

Requests are validated strictly (no "yes" -> True coercion) so a wrong type is a 400 naming the field, as the OpenAI
API does. Unknown fields are accepted and ignored, because clients add new optional fields faster than servers.
Integer fields take integral JSON numbers written with a fraction (`2.0`): JSON has one number type, and JSON Schema
(which the published OpenAPI schema is) counts 2.0 as an integer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

from fslm.io import JsonError, loads_json

M = TypeVar("M", bound=BaseModel)


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
    application/json: openapi.document corrects FastAPI, which would use the route's own media type)."""
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


MAX_TOP_LOGPROBS = 20  # as OpenAI's chat completions
MAX_COMPLETION_LOGPROBS = 5  # as OpenAI's legacy completions
JsonInt = Annotated[int, BeforeValidator(_integral)]
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
SeedInt = Annotated[int, Field(ge=-(2**63), le=2**64 - 1), BeforeValidator(_integral)]  # what torch.manual_seed takes
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), BeforeValidator(_integral)]
CompletionLogprobs = Annotated[int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS), BeforeValidator(_integral)]
# No tool can run on an fslm stack: an empty list is harmless, anything in it is refused (see parse_request).
NoTools = Annotated[
    list[Any] | None,
    WithJsonSchema(
        {"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}], "description": "not supported: omit or []"}
    ),
]


def not_supported(*allowed: Any) -> dict[str, Any]:
    """The JSON schema of a field fslm refuses (400 unsupported_parameter) unless null or one of `allowed`."""
    return {"enum": [*allowed, None], "description": "not supported: omit" + (f" or {allowed[0]}" if allowed else "")}


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


MAX_N = 16  # choices per request (each is a row of the answer stage's batch)
MAX_STOPS = 4  # as OpenAI's API
MAX_STOP_CHARS = 200
_STOP_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
STOP_SCHEMA = {
    "anyOf": [_STOP_TEXT, {"type": "array", "items": _STOP_TEXT, "maxItems": MAX_STOPS}, {"type": "null"}],
    "description": "added to the answer stage's own stop strings",
}


class SamplingFields(_Model):
    """The fields chat and text completions share: limits and the answer stage's decoding (fslm.serve.answer)."""

    model: str | None = Field(None, description="the served model id (GET /v1/models); any other is a 404")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    n: JsonInt = Field(1, ge=1, le=MAX_N, description="choices; each is one more row of the answer stage")
    # The answer stage decodes with these; earlier stages keep their stack config settings (docs/serve.md).
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy")
    top_p: float | None = Field(None, ge=0, le=1, description="0 = greedy")
    stop: Annotated[str | list[str] | None, WithJsonSchema(STOP_SCHEMA)] = None
    seed: SeedInt | None = Field(None, description="reproducible sampling of the answer stage")
    user: str | None = None
    fslm_trace: bool | None = None  # fslm extension: include the stage trace (default: the server's setting)

    @property
    def logprob_count(self) -> int | None:
        return None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        """OpenAI's limits: at most 4 stop strings; an empty one would end every answer at once."""
        items = [value] if isinstance(value, str) else value or []
        if len(items) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(items)}")
        if any(not item or len(item) > MAX_STOP_CHARS for item in items):
            raise ValueError(f"stop strings must be 1 to {MAX_STOP_CHARS} characters")
        return value

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(
        ..., min_length=1, description="the last must be a user message with text: the question (else 400)"
    )
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = Field(
        None, description="return the answer's token log-probabilities (a stack whose answer is one generate stage)"
    )
    top_logprobs: TopLogprobs | None = Field(None, description="most likely tokens per position; needs logprobs: true")
    tools: NoTools = None

    @property
    def new_token_cap(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def logprob_count(self) -> int | None:
        """Alternatives per token when log-probabilities are asked for, else None."""
        return (self.top_logprobs or 0) if self.logprobs else None


def parse_request(body: bytes) -> ChatCompletionRequest:
    """Bytes -> validated chat request, or an APIError whose message and `param` name the bad field."""
    request = parse_model(body, ChatCompletionRequest)
    if request.tools:
        raise APIError(
            400, "tools/function calling is not supported by fslm stacks", param="tools", code="unsupported_parameter"
        )
    if request.top_logprobs is not None and not request.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    return request


def parse_model(body: bytes, model: type[M]) -> M:
    """Bytes -> a validated request model; strict JSON first (every way a body can be malformed is a 400)."""
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
        return model.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err) from None


def unsupported(param: str, why: str) -> APIError:
    """400 for a parameter fslm cannot honour: refused by name rather than silently ignored."""
    return APIError(400, f"{param}: {why}", param=param, code="unsupported_parameter")


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


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"
