"""Response shapes for the OpenAPI document only: handlers build plain dicts (fslm.serve.shapes, traces), and these
models tell a client generator or a fuzzer what those dicts hold."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fslm.serve.schemas import ErrorResponse


class _Doc(BaseModel):
    """A response shape for the OpenAPI document only (handlers build plain dicts: fslm.serve.shapes); extra
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


class TopLogprob(_Doc):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobDoc(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Doc):
    """Asked for with `logprobs: true` (and `top_logprobs`): the answer's tokens, the model's own log-probabilities."""

    content: list[TokenLogprobDoc]
    refusal: None


class Choice(_Doc):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: ChatLogprobs | None


class ChatCompletion(_Doc):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: Usage
    fslm_trace: TraceRecord | None = None
    fslm_cost: dict[str, Any] | None = Field(None, description="seconds and tokens per stage, and their totals")


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
    logprobs: ChatLogprobs | None  # the whole choice's, in its finish chunk


class ChatCompletionChunk(_Doc):
    """One streamed event: the first carries `fslm_event` "queued"; then "running", one "stage" per earlier stage and
    "answering"; then the answer's pieces as generated; one chunk per choice has `finish_reason` (the last also
    `fslm_trace` and `fslm_cost`), and with stream_options.include_usage a final one has no choices and `usage`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    fslm_event: dict[str, Any] | None = None
    fslm_trace: TraceRecord | None = None
    fslm_cost: dict[str, Any] | None = None


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def sse_response(chunk: type[BaseModel]) -> dict:
    """One server-sent event, as OpenAPI 3.1 reads `schema` under text/event-stream: its `data` is a `chunk`, an error
    that happened after the stream opened, or the closing "[DONE]"."""
    data = {"contentMediaType": "application/json", "contentSchema": {"anyOf": [_ref(chunk), _ref(ErrorResponse)]}}
    return {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {"anyOf": [{"const": "[DONE]"}, data]}},
            }
        }
    }


SSE_RESPONSE = sse_response(ChatCompletionChunk)

DOCUMENTED_MODELS = (ChatCompletionChunk,)  # referred to only from SSE_RESPONSE: openapi.document adds it


def ok_response(model: type[BaseModel], description: str, **content: Any) -> dict[int | str, dict[str, Any]]:
    """`responses=` entry for a route's 200 (documentation only: the handler's dict is sent as built)."""
    entry: dict[str, Any] = {"model": model, "description": description}
    if content:
        entry["content"] = content
    return {200: entry}
