"""Dynamic and continuous batching: requests that arrive together share each engine call, and a request that
arrives while others run joins them at the next stage boundary.

One worker thread owns the model, so the event loop never blocks on torch. When idle it takes the first waiting
request and keeps collecting while more arrive: the group closes at `max_batch`, after `wait_s` without a new arrival,
or `max_wait_s` after the first request. (A fixed window split a burst of 16 clients 3 + 13 on a busy CPU, where
arrivals spread over ~100 ms.) Each group runs as a step generator (fslm/stack_steps.py) and all running groups advance
together, one engine call per model per round, whatever stage each group is at; between rounds the worker admits
what is waiting, up to `max_batch` requests in flight, if `join` is on (`--join-running`, the default: 1.10x the
throughput on the HF engine, benchmarks/results/serve/join-rowlora/RESULTS.md). The queue is bounded: `submit` raises `QueueFull` instead of
letting memory grow, and the server turns that into a 429.
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
from fslm.stack_steps import Steps, Together

log = logging.getLogger("fslm.serve")

# run(prompts, group key) -> one StackResult per prompt, in order. The key is a job's `cap`: an answer token cap
# (int | None), or any hashable the server groups by (fslm.serve.answer.AnswerOptions). Runs whole, between rounds.
RunBatch = Callable[[Sequence[str], Any], list[StackResult]]
# steps(jobs, group key) -> a step generator whose value is one StackResult per job: runners that batch with other
# groups at stage boundaries, and that need more of a job than its prompt (its stream sink); set on each job what
# else it needs (job.answered).
StepsJobs = Callable[[list["Job"], Any], Steps[list[StackResult]]]


def _at_once(run: RunBatch, jobs: list[Job], cap: Any) -> Steps[list[StackResult]]:
    """A RunBatch as a step generator with no steps: the whole run happens when it starts."""
    return run([job.prompt for job in jobs], cap)
    yield  # a generator that never yields


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
        run: RunBatch | None = None,
        *,
        max_batch: int = 16,
        wait_s: float = 0.01,
        max_wait_s: float = 0.1,
        maxsize: int = 64,
        on_batch: Callable[[BatchReport], None] | None = None,
        steps: StepsJobs | None = None,
        join: bool = True,
    ):
        if (run is None) == (steps is None):
            raise ValueError("give BatchQueue one runner: run or steps")
        self._steps: StepsJobs = steps or (lambda jobs, cap: _at_once(run, jobs, cap))  # type: ignore[arg-type]
        self.max_batch = max_batch
        self.join = join  # admit waiting requests between rounds while groups run (off: only when idle)
        self.wait_s = wait_s
        self.max_wait_s = max(max_wait_s, wait_s)
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=maxsize)
        self._on_batch = on_batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._together = Together()  # the groups in flight; only the worker thread touches it
        self.running = 0  # jobs in flight
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
        """Admit nothing more and finish the groups in flight; requests still waiting fail with a retryable error."""
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
        while not self._stop.is_set() or len(self._together):
            try:
                idle = not len(self._together)
                if not self._stop.is_set() and (idle or self.join):
                    self._admit(self._collect(wait=idle))
                self._together.step()
            except BaseException:  # never let the worker die with requests pending (Together catches run errors)
                log.exception("batch worker error")

    def _collect(self, *, wait: bool) -> list[Job]:
        """Idle (`wait`): the first request and those arriving just after it. Busy: what is waiting now, up to
        `max_batch` requests in flight, without waiting (the groups in flight are not held up)."""
        room = self.max_batch - self.running
        if room <= 0:
            return []
        if not wait:
            batch = []
            while len(batch) < room:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        else:
            try:
                batch = [self._queue.get(timeout=0.1)]
            except queue.Empty:
                return []
            opened = last = time.perf_counter()
            while len(batch) < room:
                remaining = min(last + self.wait_s, opened + self.max_wait_s) - time.perf_counter()
                try:
                    batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
                last = time.perf_counter()
        # Requests whose client went away before we started are dropped here (their future was cancelled).
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _admit(self, batch: list[Job]) -> None:
        groups: dict[Any, list[Job]] = defaultdict(list)
        for job in batch:
            groups[job.cap].append(job)
        for cap, jobs in groups.items():
            self._start_group(jobs, cap)

    def _start_group(self, jobs: list[Job], cap: Any) -> None:
        t0 = time.perf_counter()
        for job in jobs:
            job.started, job.batch_size = t0, len(jobs)
            if job.on_start is not None:
                job.on_start()
        self.running += len(jobs)
        try:
            steps = self._steps(jobs, cap)
        except BaseException as err:
            self._finish(jobs, cap, t0, None, err)
            return
        self._together.add(steps, lambda results, err: self._finish(jobs, cap, t0, results, err))

    def _finish(
        self, jobs: list[Job], cap: Any, t0: float, results: list[StackResult] | None, err: BaseException | None
    ) -> None:
        self.running -= len(jobs)
        if err is not None:
            if isinstance(err, FslmError) and len(jobs) > 1:  # one bad input must not fail its batch-mates
                for job in jobs:
                    self._start_group([job], cap)
                return
            if not isinstance(err, FslmError):
                log.error("stack run failed for a batch of %d", len(jobs), exc_info=err)
            for job in jobs:
                job.future.set_exception(err)
            return
        t1 = time.perf_counter()
        self.last_batch_seconds = t1 - t0
        self.recent_batch_seconds.append(t1 - t0)
        if results is None or len(results) != len(jobs):  # a runner bug: fail the requests rather than hang them
            for job in jobs:
                job.future.set_exception(RuntimeError(f"the runner returned no result for {len(jobs)} requests"))
            return
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
