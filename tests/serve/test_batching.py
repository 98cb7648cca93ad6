"""Dynamic batching really batches, the bounded queue answers 429, and the worker survives bad batches."""

from __future__ import annotations

import concurrent.futures
import threading

import httpx
import pytest
from live_server import running_server
from prometheus_client.parser import text_string_to_metric_families

from fslm.errors import InputError
from fslm.serve import ServeSettings, create_app
from fslm.serve.batching import BatchQueue, QueueFull
from fslm.stack import StackResult, StageRecord

from .conftest import wait_until

PROMPTS = ["What is the capital of France?", "Two plus two?", "Which planet is largest?", "A spider has how many legs?"]


def chat(url: str, prompt: str, **extra) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def metric(url: str, name: str) -> dict[tuple, float]:
    """{(sample name, labels...): value} for one metric family."""
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return {(s.name, *sorted(s.labels.items())): s.value for s in family.samples}
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("join", [False, True])
def test_requests_arriving_mid_run_wait_or_join_it_at_the_next_stage_boundary(gated_stack, tiny_stack, join):
    engine = gated_stack.engine
    app = create_app(gated_stack, ServeSettings(max_batch=8, batch_wait_ms=50, queue_size=16, join_running=join))
    queue = app.state.fslm.queue
    with running_server(app) as url, concurrent.futures.ThreadPoolExecutor(8) as pool:
        engine.gate.clear()
        first = pool.submit(chat, url, "Hello there")
        assert engine.entered.wait(20)  # the worker is busy with the first request
        rest = [pool.submit(chat, url, p) for p in PROMPTS]
        wait_until(lambda: queue.depth == len(PROMPTS))
        engine.gate.set()
        responses = [f.result() for f in [first, *rest]]
        assert [r.status_code for r in responses] == [200] * 5
        if join:  # the lone first request's intent; then its facts with the four's intent (they waited together),
            # its answer with their facts (one mixed call: other caps), and their answers
            assert engine.batch_sizes == [1, 5, 5, 4]
        else:  # the first request's three stages, then three stages for the four that waited together
            assert engine.batch_sizes == [1, 1, 1, 4, 4, 4]
        sizes = metric(url, "fslm_batch_size")
        assert sizes[("fslm_batch_size_count",)] == 2 and sizes[("fslm_batch_size_sum",)] == 5
        for prompt, resp in zip(PROMPTS, responses[1:]):
            body = resp.json()
            assert body["fslm_trace"]["batch_size"] == 4
            assert body["choices"][0]["message"]["content"] == tiny_stack.run(prompt).answer  # batched == alone


def test_full_queue_answers_429_with_retry_after_and_loses_nothing(gated_stack):
    engine = gated_stack.engine
    app = create_app(gated_stack, ServeSettings(max_batch=1, queue_size=2))
    queue = app.state.fslm.queue
    with running_server(app) as url, concurrent.futures.ThreadPoolExecutor(4) as pool:
        engine.gate.clear()
        running = pool.submit(chat, url, PROMPTS[0])
        assert engine.entered.wait(20)
        waiting = [pool.submit(chat, url, p) for p in PROMPTS[1:3]]
        wait_until(lambda: queue.depth == 2)
        for stream in (False, True):
            refused = chat(url, PROMPTS[3], stream=stream)
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        engine.gate.set()
        assert [f.result().status_code for f in [running, *waiting]] == [200, 200, 200]
        assert metric(url, "fslm_rejected_requests")[("fslm_rejected_requests_total", ("reason", "queue_full"))] == 2
        assert chat(url, PROMPTS[3]).status_code == 200  # and the server keeps serving


# ---- the queue on its own (no model) ----------------------------------------------------------------------------


def fake_results(prompts, cap=None):
    if any(p == "bad" for p in prompts):
        raise InputError("bad prompt")
    if any(p == "boom" for p in prompts):
        raise RuntimeError("engine exploded")
    return [
        StackResult(p, f"answer to {p} cap={cap}", [StageRecord("answer", p, p.upper(), 1, 2, 0.0)]) for p in prompts
    ]


class Recorder:
    def __init__(self):
        self.calls: list[tuple[list[str], int | None]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, prompts, cap):
        self.entered.set()
        self.gate.wait(10)
        self.calls.append((list(prompts), cap))
        return fake_results(prompts, cap)


@pytest.fixture()
def recorder():
    return Recorder()


def test_one_bad_prompt_does_not_fail_its_batch_mates(recorder):
    q = BatchQueue(recorder, max_batch=8, wait_s=0.2)
    recorder.gate.clear()
    jobs = [q.submit(p) for p in ["warm", "a", "bad", "b"]]
    recorder.gate.set()
    assert jobs[0].future.result(10).answer == "answer to warm cap=None"
    assert jobs[1].future.result(10).answer.startswith("answer to a")
    with pytest.raises(InputError):
        jobs[2].future.result(10)
    assert jobs[3].future.result(10).prompt == "b"
    q.stop()


def test_caps_split_a_batch_and_cancelled_requests_are_skipped(recorder):
    q = BatchQueue(recorder, max_batch=8, wait_s=0.3)
    recorder.gate.clear()
    blocker = q.submit("first")
    assert recorder.entered.wait(10)  # the worker runs it and waits on the gate
    jobs = [q.submit("x", 3), q.submit("y"), q.submit("z", 3), q.submit("gone")]
    assert jobs[3].future.cancel()
    recorder.gate.set()
    assert blocker.future.result(10).prompt == "first"
    assert jobs[0].future.result(10).answer.endswith("cap=3") and jobs[1].future.result(10).answer.endswith("cap=None")
    assert sorted(recorder.calls[1:]) == [(["x", "z"], 3), (["y"], None)]
    assert all("gone" not in prompts for prompts, _ in recorder.calls)
    q.stop()


def test_worker_survives_an_engine_error_and_bounded_queue_refuses(recorder):
    q = BatchQueue(recorder, max_batch=1, wait_s=0.0, maxsize=1)
    with pytest.raises(RuntimeError):
        q.submit("boom").future.result(10)
    assert q.submit("fine").future.result(10).prompt == "fine" and q.alive
    recorder.gate.clear()
    recorder.entered.clear()
    q.submit("hold")
    assert recorder.entered.wait(10)
    waiting = q.submit("waits")
    with pytest.raises(QueueFull):
        q.submit("one too many")
    recorder.gate.set()
    assert waiting.future.result(10).prompt == "waits"
    q.stop()
    assert not q.alive


def test_stop_fails_waiting_requests_instead_of_hanging(recorder):
    q = BatchQueue(recorder, max_batch=1, wait_s=0.0, maxsize=4)
    recorder.gate.clear()
    q.submit("hold")
    assert recorder.entered.wait(10)
    waiting = q.submit("never runs")
    threading.Timer(0.2, recorder.gate.set).start()
    q.stop()
    with pytest.raises(QueueFull):
        waiting.future.result(1)


def test_a_burst_spread_over_time_still_forms_one_batch(recorder):
    """Arrivals 30 ms apart join one batch while each gap is under wait_s; max_wait_s still bounds the wait."""
    import time

    def four_arrivals_30ms_apart(q: BatchQueue) -> list:
        jobs = []
        for p in ["a", "b", "c", "d"]:
            jobs.append(q.submit(p))
            time.sleep(0.03)
        [job.future.result(10) for job in jobs]
        q.stop()
        return jobs

    jobs = four_arrivals_30ms_apart(BatchQueue(recorder, max_batch=16, wait_s=0.08, max_wait_s=2.0))
    assert [prompts for prompts, _ in recorder.calls] == [["a", "b", "c", "d"]]
    assert {job.batch_size for job in jobs} == {4}

    capped = Recorder()
    four_arrivals_30ms_apart(BatchQueue(capped, max_batch=16, wait_s=0.08, max_wait_s=0.05))
    assert len(capped.calls) >= 2 and sum(len(p) for p, _ in capped.calls) == 4


def test_a_request_arriving_mid_run_starts_at_the_next_round_and_stop_finishes_runs_in_flight():
    """Step runners: a group in flight does not hold a newcomer back until it ends, and stop() drains, not drops."""
    events: list[tuple[str, int]] = []
    gate = threading.Event()

    def steps(jobs, cap):
        for k in range(3):
            events.append((jobs[0].prompt, k))
            if (jobs[0].prompt, k) == ("a", 1):
                assert gate.wait(10)
            yield []  # a round with no model work
        return fake_results([job.prompt for job in jobs], cap)

    q = BatchQueue(steps=steps, max_batch=4, wait_s=0.0, join=True)
    first = q.submit("a")
    wait_until(lambda: ("a", 1) in events)
    second = q.submit("b")
    wait_until(lambda: q.depth == 1)
    gate.set()
    assert second.future.result(10).answer == "answer to b cap=None" and first.future.result(10).prompt == "a"
    assert events == [("a", 0), ("a", 1), ("b", 0), ("a", 2), ("b", 1), ("b", 2)]

    events.clear()
    gate.clear()
    held = q.submit("a")
    wait_until(lambda: ("a", 1) in events)
    threading.Timer(0.2, gate.set).start()
    q.stop()
    assert held.future.result(1).prompt == "a" and not q.alive


def test_a_queue_needs_exactly_one_runner():
    with pytest.raises(ValueError):
        BatchQueue()
    with pytest.raises(ValueError):
        BatchQueue(fake_results, steps=lambda jobs, cap: iter(()))
