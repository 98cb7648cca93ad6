"""What one `fslm serve` app owns (the stack, its batch worker, metrics, traces) and how a batch group runs.

A batch group is keyed by what its requests ask of the answer stage: a token cap alone (int | None) runs the stack
exactly as `fslm run` does; anything more (sampling parameters, n > 1, streaming) is an AnswerOptions and runs through
fslm.serve.answer. Streaming requests go through the same queue and worker as the rest (one thread owns the model;
they batch with requests asking for the same options), so a stream never races a batch for the cores.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import replace

from starlette.concurrency import run_in_threadpool

from fslm.errors import FslmError
from fslm.logs import RunLog, stack_entry, stack_identity
from fslm.serve.answer import Answered, AnswerOptions, answering_stage, final_variant, run_split, run_whole
from fslm.serve.batching import BatchQueue, Job, QueueFull
from fslm.serve.chat import trace_record
from fslm.serve.config import ServeSettings
from fslm.serve.metrics import ServeMetrics
from fslm.serve.schemas import APIError
from fslm.serve.traces import TraceStore
from fslm.stack import Stack, StackResult
from fslm.stack_steps import Steps

RETRY_MIN_S, RETRY_MAX_S = 1, 60
MAX_VARIANTS = 8  # config copies kept for stacks whose answer is not a plain generate stage


def retry_after(recent_batch_seconds: list[float], depth: int, running: int, max_batch: int) -> int:
    """Seconds a refused client should wait: the batches ahead of it (the waiting requests, max_batch at a time, plus
    the one running) times the mean of recent batch times, clamped to [1, 60]. 1 s per batch before any is measured."""
    mean = sum(recent_batch_seconds) / len(recent_batch_seconds) if recent_batch_seconds else 1.0
    batches = max(1, math.ceil(depth / max(max_batch, 1)) + (1 if running else 0))
    return int(min(RETRY_MAX_S, max(RETRY_MIN_S, math.ceil(mean * batches))))


class ServeState:
    """Everything one app owns: the stack, its batch worker, metrics, recent traces."""

    def __init__(self, stack: Stack, settings: ServeSettings):
        self.stack = stack
        self.settings = settings
        self.model_name = settings.model_name or stack.config.name
        self.max_prompt_tokens = settings.max_prompt_tokens or stack.config.max_prompt_tokens
        self.answer_tokens = stack.config.answer_stage.generation.max_new_tokens
        self.api_key = settings.resolved_api_key()
        self.created = int(time.time())
        self._variants: dict[int, Stack] = {}
        self._final_variants: OrderedDict[AnswerOptions, Stack] = OrderedDict()
        self.queue = BatchQueue(
            max_batch=settings.max_batch,
            wait_s=settings.batch_wait_ms / 1000.0,
            max_wait_s=settings.batch_max_wait_ms / 1000.0,
            maxsize=settings.queue_size,
            join=settings.join_running,
            on_batch=lambda report: self.metrics.observe_batch(report),
            steps=self._steps,
        )
        self.metrics = ServeMetrics(lambda: self.queue.depth, lambda: self.queue.running)
        # A request waits for its log write (so the viewer lists it as soon as it is answered), 1 s at most when
        # another process holds the log's write lock; past that it is answered unlogged.
        self.traces = TraceStore(
            settings.trace_history, RunLog(settings.resolved_log_db(), timeout=1.0) if settings.resolved_log() else None
        )
        self._identity: dict | None = None

    def _steps(self, jobs: list[Job], key) -> Steps[list[StackResult]]:
        """One batch group, as a step generator run by the batch worker beside other groups: the plain path, or the
        answer stage under the group's options (jobs split by the stage that answers them: generated apart where it
        can be, else the whole stack)."""
        if not isinstance(key, AnswerOptions):
            return (yield from self._stack_for(key).run_steps([job.prompt for job in jobs]))
        parts: dict[str | None, list[int]] = {}
        for i, job in enumerate(jobs):
            stage = answering_stage(self.stack.config, job.prompt)
            parts.setdefault(None if stage is None else stage.name, []).append(i)
        done: dict[int, Answered] = {}
        for name, members in parts.items():
            part = [jobs[i] for i in members]
            answered = yield from self._run_part(part, key, name)
            done.update(zip(members, answered, strict=True))
        for i, job in enumerate(jobs):
            job.answered = done[i]
        return [done[i].result for i in range(len(jobs))]

    def _run_part(self, jobs: list[Job], key: AnswerOptions, stage: str | None) -> Steps[list[Answered]]:
        prompts = [job.prompt for job in jobs]
        if stage is not None:
            sink = on_stages = None
            if key.stream:
                sink = lambda j, choice, piece: jobs[j].sink(choice, piece)  # noqa: E731
                on_stages = lambda j, record: jobs[j].on_stages(record, stage)  # noqa: E731
            return (yield from run_split(self.stack, self.stack.config.stage(stage), prompts, key, sink, on_stages))
        answered = yield from run_whole(self._final_variant(key), prompts, key.n)
        if key.stream:  # not token by token: the answer exists only when the whole stack is done
            for job, one in zip(jobs, answered, strict=True):
                for choice, gen in enumerate(one.choices):
                    if gen.text:
                        job.sink(choice, gen.text)
        return answered

    def _final_variant(self, options: AnswerOptions) -> Stack:
        """The stack with the request's settings on its final stages (a few kept: each copy is cheap but not free)."""
        key = AnswerOptions(
            cap=options.cap, temperature=options.temperature, top_p=options.top_p, seed=options.seed, stop=options.stop
        )
        if key not in self._final_variants:
            self._final_variants[key] = final_variant(self.stack, key)
            while len(self._final_variants) > MAX_VARIANTS:
                self._final_variants.popitem(last=False)
        self._final_variants.move_to_end(key)
        return self._final_variants[key]

    def group_key(self, options: AnswerOptions):
        """A plain request's key is its cap (the `fslm run` path, batched with every other plain request)."""
        cap = self.answer_cap(options.cap)
        if options.plain and not options.stream:
            return cap
        return AnswerOptions(
            cap,
            options.temperature,
            options.top_p,
            options.seed,
            options.stop,
            options.n,
            options.stream,
            options.logprobs,
        )

    def retry_seconds(self) -> int:
        q = self.queue
        return retry_after(list(q.recent_batch_seconds), q.depth, q.running, q.max_batch)

    def _stack_for(self, cap: int | None) -> Stack:
        """The stack with its answer stage capped at `cap` new tokens (a request's max_tokens); cached per cap."""
        if cap is None:
            return self.stack
        if cap not in self._variants:  # every stage whose text may be the answer; a view: no copy, no load
            finals = self.stack.config.final_stages
            capped = {s.name: replace(self.stack.params_for(s), max_new_tokens=cap) for s in finals}
            self._variants[cap] = self.stack.with_generation(capped)
        return self._variants[cap]

    def answer_cap(self, requested: int | None) -> int | None:
        """Requests asking for at least the stack's own answer length share one batch group (None)."""
        return None if requested is None or requested >= self.answer_tokens else requested

    def submit(self, prompt: str, cap, on_start=None, *, sink=None, on_stages=None) -> Job:
        try:
            return self.queue.submit(prompt, cap, on_start, sink=sink, on_stages=on_stages)
        except QueueFull as err:
            self.metrics.rejected.labels("queue_full").inc()
            retry = self.retry_seconds()
            raise APIError(
                429,
                f"server busy: {err}; retry after {retry} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            ) from None

    async def result(self, job: Job, timeout: float, cid: str | None = None) -> StackResult:
        """The job's result, or the APIError its failure means (the failure is written to the run log first)."""
        future = asyncio.wrap_future(job.future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            error = APIError(
                503,
                f"no answer within {timeout:.0f} s; the server is overloaded",
                type="server_error",
                code="timeout",
                headers={"Retry-After": str(self.retry_seconds())},
            )
        except QueueFull as err:
            retry = str(self.retry_seconds())
            error = APIError(503, str(err), type="server_error", code="unavailable", headers={"Retry-After": retry})
        except FslmError as err:
            error = APIError(400, str(err), code="invalid_input")
        except Exception as err:  # a bug: logged, then the 500 handler answers
            await self.log(cid, job.prompt, time.perf_counter() - job.enqueued, error=f"{type(err).__name__}: {err}")
            raise
        await self.log(cid, job.prompt, time.perf_counter() - job.enqueued, error=f"{error.code}: {error.message}")
        raise error

    async def finish(self, cid: str, result: StackResult, job: Job, t0: float) -> dict:
        latency = time.perf_counter() - t0
        self.metrics.latency.observe(latency)
        record = trace_record(cid, self.model_name, result, job, latency)
        self.traces.add(record)
        await self.log(cid, result.prompt, latency, result=result, record=record)
        return record

    async def log(
        self,
        cid: str | None,
        prompt: str,
        latency: float,
        *,
        result: StackResult | None = None,
        record: dict | None = None,
        error: str | None = None,
    ) -> None:
        """Write one request to the run log, off the event loop (a log write can wait on another process's lock;
        it never fails the request: fslm.logs.recording notes a problem once and goes on)."""
        if not self.traces.persistent:
            return
        keys = ("finish_reason", "batch_size", "queue_seconds", "stack_seconds", "latency_seconds")
        details = {"served_as": self.model_name, **{k: record[k] for k in keys if record and k in record}}
        started = time.time() - latency

        def entry() -> dict:
            if self._identity is None:
                self._identity = stack_identity(self.stack)  # hashes the adapter files: once, in a worker thread
            return stack_entry(
                "serve",
                prompt,
                self._identity,
                result=result,
                error=error,
                started=started,
                wall_seconds=latency,
                request_id=cid,
                details=details,
            )

        await run_in_threadpool(self.traces.write, entry, record)
