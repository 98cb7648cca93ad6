"""The OpenAI wire format: request validation, error bodies, completion and chunk objects.

Requests are validated strictly (no "yes" -> True coercion) so a wrong type is a 400 naming the field, as the OpenAI
API does. Unknown fields are accepted and ignored, because clients add new optional fields faster than servers.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status it can answer with, all carrying ErrorResponse."""
    why = {
        400: "the request is malformed (the message and `param` name the field)",
        401: "missing or wrong API key",
        404: "unknown model or trace",
        413: "request body too large",
        429: "queue full: retry after the Retry-After header",
        503: "the server is shutting down or its worker failed",
        504: "the answer took longer than the request timeout",
    }
    return {status: {"model": ErrorResponse, "description": why[status]} for status in statuses}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class ContentPart(_Model):
    type: str
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
                    f"messages[{index}].content[{j}]: only text parts are supported (got type {part.type!r})",
                    param=f"messages.{index}.content.{j}.type",
                    code="unsupported_content",
                )
            pieces.append(part.text)
        return "\n".join(pieces)


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1)
    # Accepted for compatibility; each stage's decoding is set by the stack config (see docs/serve.md).
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[Any] | None = None
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
        data = loads_json(text)
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


def _validation_error(err: ValidationError) -> APIError:
    problem = err.errors()[0]
    loc = ".".join(str(p) for p in problem["loc"]) or "(body)"
    got = problem.get("input")
    got_text = "" if problem["type"] == "missing" or isinstance(got, (dict, list)) else f" (got {got!r})"
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
