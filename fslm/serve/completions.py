"""Answering a request, for both routes: POST /v1/chat/completions (messages -> one prompt) and POST /v1/completions
(a prompt string, or a list of them: each its own stack run, choices in order, n per prompt).

Both share the limits (max_tokens against the server's --max-new-tokens, prompt length against max_prompt_tokens),
the answer stage's sampling options (fslm.serve.answer), the response extras (`fslm_trace`, `fslm_cost`) and
streaming (fslm.serve.streaming; /v1/completions streams one prompt at a time).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

from fastapi.responses import JSONResponse, Response
from pydantic import Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool

from fslm.serve.answer import AnswerOptions
from fslm.serve.chat import cost, usage
from fslm.serve.schemas import (
    MAX_N,
    APIError,
    JsonInt,
    SamplingFields,
    not_supported,
    parse_model,
    shorten,
    unsupported,
)
from fslm.serve.shapes import Shape
from fslm.serve.streaming import stream_response

INLINE_TOKENIZE_CHARS = 8_000
GREEDY_BELOW = 1e-3  # a request temperature below this decodes greedily
TOP_P_GREEDY_BELOW = 1e-6  # ... and so does a top_p below this (top-p keeps the best token alone there anyway)
MAX_PROMPTS = MAX_N
PromptText = Annotated[str, Field(max_length=1_000_000)]


class CompletionRequest(SamplingFields):
    """POST /v1/completions: the legacy text completion request, answered by the same stack."""

    prompt: PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        ..., description="the question (or a list of questions: one stack run each); token arrays are not accepted"
    )
    logprobs: Annotated[JsonInt | None, WithJsonSchema(not_supported())] = None
    echo: Annotated[bool | None, WithJsonSchema(not_supported(False))] = None
    suffix: Annotated[str | None, WithJsonSchema(not_supported(""))] = None
    best_of: Annotated[JsonInt | None, WithJsonSchema(not_supported(1))] = None


def parse_completion(body: bytes) -> CompletionRequest:
    """Bytes -> validated text completion request; fields fslm cannot honour are refused by name."""
    req = parse_model(body, CompletionRequest)
    if req.logprobs is not None:
        raise unsupported("logprobs", "log-probabilities of generated tokens are not returned by fslm serve")
    if req.echo:
        raise unsupported("echo", "the prompt is not echoed: the answer is the stack's final stage")
    if req.suffix:
        raise unsupported("suffix", "insertion (suffix) is not supported by fslm stacks")
    if req.best_of not in (None, 1):
        raise unsupported("best_of", "best_of is not supported; use n")
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if req.stream and len(prompts) > 1:
        raise unsupported("prompt", "stream: true takes one prompt (a list of one string); send the others apart")
    for i, text in enumerate(prompts):
        if not text.strip():
            param = "prompt" if isinstance(req.prompt, str) else f"prompt.{i}"
            raise APIError(400, f"{param} is empty: give the question to answer", param=param, code="empty_prompt")
    return req


def options_of(req: SamplingFields, cap: int | None) -> AnswerOptions:
    """The answer stage's options from a request. top_p = 0 means greedy, as temperature = 0 does, and so do a
    temperature under GREEDY_BELOW (logits divided by 1e-188 overflow to inf: the fuzzer sent that) and a top_p under
    TOP_P_GREEDY_BELOW (2e-309 is 0 in float32, which would drop every token): sampling there is the argmax anyway."""
    temperature, top_p = req.temperature, req.top_p
    if (top_p is not None and top_p < TOP_P_GREEDY_BELOW) or (temperature is not None and temperature < GREEDY_BELOW):
        temperature, top_p = 0.0, None
    return AnswerOptions(cap, temperature, top_p, req.seed, req.stops, req.n, req.stream)


def check_model(state, model: str | None) -> None:
    if model is not None and model != state.model_name:
        raise APIError(
            404,
            f"model {shorten(model)} does not exist; this server serves {state.model_name!r} (GET /v1/models)",
            param="model",
            code="model_not_found",
        )


def check_cap(state, requested: int | None, param: str) -> None:
    if requested is not None and requested > state.settings.max_new_tokens:
        raise APIError(
            400,
            f"{param}={shorten(requested)} exceeds this server's limit of {state.settings.max_new_tokens}",
            param=param,
            code="invalid_value",
        )


async def check_length(state, prompt: str, param: str) -> None:
    """400 context_length_exceeded over max_prompt_tokens. Short prompts tokenize inline (well under a millisecond),
    so requests of a burst reach the queue close together; long ones in a thread."""
    count = state.stack.engine.count_tokens
    n = count(prompt) if len(prompt) <= INLINE_TOKENIZE_CHARS else await run_in_threadpool(count, prompt)
    if n > state.max_prompt_tokens:
        raise APIError(
            400,
            f"{param}: the prompt built from them has {n} tokens; this server accepts at most "
            f"{state.max_prompt_tokens}. Shorten it (fslm never truncates silently).",
            param=param,
            code="context_length_exceeded",
        )


async def respond(state, shape: Shape, req: SamplingFields, prompts: list[str], cap: int | None, t0: float) -> Response:
    """Run the prompts (one job each) and answer in `shape`: streamed, or one JSON object."""
    want_trace = state.settings.trace if req.fslm_trace is None else req.fslm_trace
    key = state.group_key(options_of(req, cap))
    cid = shape.prefix + uuid.uuid4().hex[:24]
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await stream_response(state, shape, cid, prompts[0], key, want_trace, include_usage, t0)
    jobs = []
    try:
        for prompt in prompts:
            jobs.append(state.submit(prompt, key))
    except APIError:
        for job in jobs:
            job.future.cancel()
        raise
    ids = [cid] + [f"{cid}-{i}" for i in range(1, len(jobs))]
    timeout = state.settings.request_timeout_s
    results = await asyncio.gather(*(state.result(job, timeout, i) for job, i in zip(jobs, ids, strict=True)))
    return JSONResponse(await _assemble(state, shape, cid, ids, jobs, results, want_trace, t0))


async def _assemble(state, shape: Shape, cid, ids, jobs, results, want_trace: bool, t0: float) -> dict[str, Any]:
    """One response for every job: choices in prompt order (n each), summed usage, trace and cost per prompt."""
    choices: list[tuple[str, str]] = []
    records, costs = [], []
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for job, result, rid in zip(jobs, results, ids, strict=True):
        record = await state.finish(rid, result, job, t0)
        gens = job.answered.choices if job.answered is not None else []
        choices += [(g.text, g.finish_reason) for g in gens] or [(result.answer, record["finish_reason"])]
        for k, v in usage(result, job.answered).items():
            total[k] += v
        records.append(record)
        costs.append(cost(result, job.answered))
    one = len(jobs) == 1
    trace = (records[0] if one else records) if want_trace else None
    return shape.completion(
        cid, state.model_name, choices, total, fslm_trace=trace, fslm_cost=costs[0] if one else costs
    )


async def text_completions(state, body: bytes) -> Response:
    """POST /v1/completions."""
    t0 = time.perf_counter()
    from fslm.serve.shapes import TEXT

    req = parse_completion(body)
    check_model(state, req.model)
    check_cap(state, req.max_tokens, "max_tokens")
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    prompts = [p.strip() for p in prompts]
    for i, prompt in enumerate(prompts):
        await check_length(state, prompt, "prompt" if isinstance(req.prompt, str) else f"prompt.{i}")
    return await respond(state, TEXT, req, prompts, req.max_tokens, t0)
