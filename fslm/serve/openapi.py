"""The published OpenAPI document: what the server really does, so a client generator or a fuzzer can trust it.

Request bodies are read by hand (size limit first, then strict JSON), so FastAPI cannot infer them: they are declared
here, with response shapes no route returns as a model (streamed chunks, text completions).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI

from fslm.serve.completions import CompletionRequest
from fslm.serve.docmodels import DOCUMENTED_MODELS, TraceRecord, Usage, _Doc, sse_response
from fslm.serve.schemas import ChatCompletionRequest, ErrorResponse


class TextLogprobs(_Doc):
    """Asked for with `logprobs: k`: the answer's tokens, their log-probabilities, the k best alternatives each."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(_Doc):
    index: int
    text: str
    finish_reason: str | None
    logprobs: TextLogprobs | None


class TextCompletion(_Doc):
    """POST /v1/completions (and, streamed, each of its events: the same object with one choice's new text)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[TextChoice]
    usage: Usage | None = None
    fslm_trace: TraceRecord | list[TraceRecord] | None = None
    fslm_cost: dict[str, Any] | list[dict[str, Any]] | None = None
    fslm_event: dict[str, Any] | None = None


SSE_TEXT = sse_response(TextCompletion)
COMPLETION_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CompletionRequest"}}},
}


REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
}
ERROR_REF = "#/components/schemas/" + ErrorResponse.__name__
BEARER = {"type": "http", "scheme": "bearer", "description": "the server's FSLM_API_KEY"}


def document(app: FastAPI, max_new_tokens: int, protected: set[str] | None) -> None:
    """Make the published OpenAPI document say what the server really does, so a client generator or a fuzzer can
    trust it: the request body model (read by hand, so FastAPI cannot infer it) with this server's max_tokens limit;
    every error as ErrorResponse in application/json (FastAPI would label /metrics' errors text/plain); no 422
    (validation errors are answered 400); and, when a key is set, bearer auth on the routes that check it."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {})
            _add_models(components.setdefault("schemas", {}), max_new_tokens)
            for path, item in schema["paths"].items():
                for operation in item.values():
                    _fix_responses(operation["responses"])
                    if protected is not None and path in protected:
                        operation["security"] = [{"bearer": []}]
            if protected is not None:
                components["securitySchemes"] = {"bearer": BEARER}
        return app.openapi_schema

    app.openapi = openapi


def _add_models(components: dict[str, Any], max_new_tokens: int) -> None:
    """The models no route declares to FastAPI (the hand-read request body, the streamed chunk) into components."""
    for model in (ChatCompletionRequest, CompletionRequest, TextCompletion, *DOCUMENTED_MODELS):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(definition.pop("$defs", {}))
        components[model.__name__] = definition
    for body, names in (
        ("ChatCompletionRequest", ("max_tokens", "max_completion_tokens")),
        ("CompletionRequest", ("max_tokens",)),
    ):
        for name in names:
            components[body]["properties"][name]["anyOf"][0]["maximum"] = max_new_tokens
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)


def _fix_responses(responses: dict[str, Any]) -> None:
    responses.pop("422", None)
    for response in responses.values():
        media = response.get("content", {})
        if any(m.get("schema", {}).get("$ref") == ERROR_REF for m in media.values()):
            response["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}
