"""Server-sent events for `stream: true`, token by token.

The request goes through the batch queue like any other (fslm.serve.state): the worker thread runs the earlier
stages, reports them (`on_stages`), then generates the answer stage and hands every new piece of text to the job's
sink. Sinks and callbacks run on the worker thread; they only put events on this request's asyncio queue
(call_soon_threadsafe), so a slow client never slows the batch. Events, in order:

- `fslm_event: {"status": "queued", "queue_depth"}` with the first chunk (the role), at once;
- `{"status": "running", "batch_size"}` when the request's batch starts;
- `{"status": "stage", "stage", "output", "tokens_in", "tokens_out", "seconds", "skipped"}` for each earlier stage
  as soon as its record exists (in trace order), then `{"status": "answering", "stage"}`;
- the answer's text pieces as the answer stage generates them (`delta.content`, or `text` for /v1/completions);
- one chunk per choice with its `finish_reason` (and, when asked for, the choice's whole `logprobs`); the last also
  carries `fslm_trace` and `fslm_cost`;
- with stream_options.include_usage, a chunk without choices carrying `usage`; then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from fastapi.responses import StreamingResponse

from fslm.serve.chat import cost, usage
from fslm.serve.schemas import APIError, sse
from fslm.serve.shapes import Shape

STAGE_FIELDS = ("stage", "output", "tokens_in", "tokens_out", "seconds", "skipped")


def stage_event(record: Any) -> dict[str, Any]:
    """An earlier stage's record as a live event (no input: the full trace comes with the last chunk)."""
    data = asdict(record)
    return {"status": "stage", **{k: data.get(k) for k in STAGE_FIELDS}}


async def stream_response(
    state, shape: Shape, cid: str, prompt: str, key: Any, want_trace: bool, include_usage: bool, t0: float
) -> StreamingResponse:
    """Submit the request (a full queue is a 429 before the stream opens), then stream its events."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple] = asyncio.Queue()

    def put(*item: Any) -> None:
        """Called on the worker thread: must never raise into the decode loop (that would fail the whole batch)."""
        try:
            loop.call_soon_threadsafe(events.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            pass

    job = state.submit(
        prompt,
        key,
        on_start=lambda: put("running"),
        sink=lambda choice, piece: put("piece", choice, piece),
        on_stages=lambda record, stage: put("stage", record) if record is not None else put("answering", stage),
    )
    job.future.add_done_callback(lambda _: put("done"))
    body = _events(state, shape, cid, job, events, want_trace, include_usage, t0)
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _events(
    state, shape: Shape, cid: str, job, events: asyncio.Queue, want_trace: bool, include_usage: bool, t0: float
) -> AsyncIterator[str]:
    model = state.model_name
    deadline = t0 + state.settings.request_timeout_s
    first_piece = True
    try:
        yield sse(shape.chunk(cid, model, role=True, fslm_event={"status": "queued", "queue_depth": state.queue.depth}))
        while True:
            try:
                item = await asyncio.wait_for(events.get(), max(deadline - time.perf_counter(), 0.001))
            except TimeoutError:
                break  # state.result below answers the timeout
            kind = item[0]
            if kind == "done":
                break
            if kind == "running":
                yield sse(shape.chunk(cid, model, fslm_event={"status": "running", "batch_size": job.batch_size}))
            elif kind == "stage":
                yield sse(shape.chunk(cid, model, fslm_event=stage_event(item[1])))
            elif kind == "answering":
                yield sse(shape.chunk(cid, model, fslm_event={"status": "answering", "stage": item[1]}))
            elif kind == "piece":
                if first_piece:
                    first_piece = False
                    state.metrics.ttft.observe(time.perf_counter() - t0)
                yield sse(shape.chunk(cid, model, item[1], item[2]))
        try:
            result = await state.result(job, max(deadline - time.perf_counter(), 0.001), cid)
        except APIError as err:
            yield sse(err.body())
            yield sse("[DONE]")
            return
        record = await state.finish(cid, result, job, t0)
        choices = job.answered.choices if job.answered is not None else []
        reasons = [g.finish_reason for g in choices] or [record["finish_reason"]]
        if first_piece and result.answer:  # a plain stack path never streamed: send the answer whole
            state.metrics.ttft.observe(time.perf_counter() - t0)
            yield sse(shape.chunk(cid, model, 0, result.answer))
        logged = job.answered.logprobs if job.answered is not None else None
        for index, reason in enumerate(reasons):
            last = index == len(reasons) - 1
            extra = {"fslm_trace": record if want_trace else None, "fslm_cost": cost(result, job.answered)}
            lp = logged[index] if logged is not None else None
            yield sse(shape.chunk(cid, model, index, None, reason, logprobs=lp, **(extra if last else {})))
        if include_usage:
            yield sse(shape.usage_chunk(cid, model, usage(result, job.answered)))
        yield sse("[DONE]")
    finally:
        if not job.future.done():
            job.future.cancel()  # client went away: a request not yet started is dropped from the queue
