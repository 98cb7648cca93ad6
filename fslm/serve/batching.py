"""Dynamic batching: requests that arrive together share one `Stack.run_batch` (one batched forward pass per stage).

One worker thread owns the model, so the event loop never blocks on torch. It takes the first waiting request and
keeps collecting while more arrive: the batch closes at `max_batch`, after `wait_s` without a new arrival, or
`max_wait_s` after the first request. (A fixed window split a burst of 16 clients 3 + 13 on a busy CPU, where arrivals
spread over ~100 ms.) The queue is bounded: `submit` raises `QueueFull` instead of letting memory grow, and the server
turns that into a 429.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fslm.errors import FslmError
from fslm.stack import StackResult

log = logging.getLogger("fslm.serve")

# run(prompts, group key) -> one StackResult per prompt, in order. The key is a job's `cap`: an answer token cap
# (int | None), or any hashable the server groups by (fslm.serve.answer.AnswerOptions).
RunBatch = Callable[[Sequence[str], Any], list[StackResult]]
# run_jobs(jobs, group key) -> one StackResult per job: for runners that need more of a job than its prompt (its
# stream sink); set on each job what else it needs (job.answered).
RunJobs = Callable[[list["Job"], Any], list[StackResult]]


class QueueFull(Exception):
    """The bounded queue is full; retry later."""


@dataclass
class Job:
    prompt: str
    cap: Any  # the group key: max new tokens for the answer stage (None = the stack's own), or AnswerOptions
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    finished: float = 0.0
    batch_size: int = 0
    on_start: Callable[[], None] | None = None
    sink: Callable[[int, str], None] | None = None  # streaming: (choice, text piece), called on the worker thread
    # streaming: (an earlier stage's record as soon as it exists, or None once all exist; the stage answering next)
    on_stages: Callable[[Any, str], None] | None = None
    answered: Any = None  # what a run_jobs runner leaves besides the result (fslm.serve.answer.Answered)


@dataclass(frozen=True)
class BatchReport:
    size: int
    seconds: float
    tokens_in: int
    tokens_out: int
    queue_waits: tuple[float, ...]


class BatchQueue:
    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch: int = 16,
        wait_s: float = 0.01,
        max_wait_s: float = 0.1,
        maxsize: int = 64,
        on_batch: Callable[[BatchReport], None] | None = None,
        run_jobs: RunJobs | None = None,
    ):
        self._run = run
        self._run_jobs = run_jobs
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_wait_s = max(max_wait_s, wait_s)
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=maxsize)
        self._on_batch = on_batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.running = 0  # jobs in the batch being computed now
        self.last_batch_seconds = 0.0
        self.recent_batch_seconds: deque[float] = deque(maxlen=20)  # what Retry-After is computed from

    # ---- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="fslm-batch-worker", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current batch; requests still waiting fail with a retryable error."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(QueueFull("server is shutting down"))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def capacity(self) -> int:
        return self._queue.maxsize

    def submit(
        self,
        prompt: str,
        cap: Any = None,
        on_start: Callable[[], None] | None = None,
        *,
        sink: Callable[[int, str], None] | None = None,
        on_stages: Callable[[Any, str], None] | None = None,
    ) -> Job:
        self.start()
        job = Job(prompt, cap, on_start=on_start, sink=sink, on_stages=on_stages)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting") from None
        return job

    # ---- worker ---------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._collect()
            if batch:
                try:
                    self._run_batch(batch)
                except BaseException as err:  # never let the worker die with requests pending
                    log.exception("batch worker error")
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(err)

    def _collect(self) -> list[Job]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        opened = last = time.perf_counter()
        while len(batch) < self.max_batch:
            remaining = min(last + self.wait_s, opened + self.max_wait_s) - time.perf_counter()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
            last = time.perf_counter()
        # Requests whose client went away before we started are dropped here (their future was cancelled).
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _run_batch(self, batch: list[Job]) -> None:
        groups: dict[Any, list[Job]] = defaultdict(list)
        for job in batch:
            groups[job.cap].append(job)
        for cap, jobs in groups.items():
            self._run_group(jobs, cap)

    def _run_group(self, jobs: list[Job], cap: Any) -> None:
        t0 = time.perf_counter()
        for job in jobs:
            job.started, job.batch_size = t0, len(jobs)
            if job.on_start is not None:
                job.on_start()
        self.running = len(jobs)
        try:
            if self._run_jobs is not None:
                results = self._run_jobs(jobs, cap)
            else:
                results = self._run([job.prompt for job in jobs], cap)
        except FslmError as err:
            self.running = 0
            if len(jobs) > 1:  # one bad input must not fail its batch-mates: retry each alone
                for job in jobs:
                    self._run_group([job], cap)
            else:
                jobs[0].future.set_exception(err)
            return
        except Exception as err:
            self.running = 0
            log.exception("stack run failed for a batch of %d", len(jobs))
            for job in jobs:
                job.future.set_exception(err)
            return
        self.running = 0
        t1 = time.perf_counter()
        self.last_batch_seconds = t1 - t0
        self.recent_batch_seconds.append(t1 - t0)
        for job, result in zip(jobs, results, strict=True):
            job.finished = t1
            job.future.set_result(result)
        if self._on_batch is not None:
            self._on_batch(
                BatchReport(
                    size=len(jobs),
                    seconds=t1 - t0,
                    tokens_in=sum(r.tokens_in for res in results for r in res.trace)
                    + sum(getattr(job.answered, "extra_in", 0) for job in jobs),
                    tokens_out=sum(r.tokens_out for res in results for r in res.trace)
                    + sum(getattr(job.answered, "extra_out", 0) for job in jobs),
                    queue_waits=tuple(t0 - job.enqueued for job in jobs),
                )
            )
