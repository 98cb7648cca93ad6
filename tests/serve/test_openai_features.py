"""Serving as OpenAI clients expect, through the official `openai` client against a live `fslm serve` (uvicorn, tiny
random model): token streaming, the answer stage's sampling parameters, /v1/completions, usage and fslm_cost,
Retry-After from measured batch times, time-to-first-token in /metrics, the viewer's CSP."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import asdict

import httpx
import openai
import pytest
from live_server import running_server
from openai import OpenAI

from fslm.config import parse_stack_config
from fslm.engine import GenerationParams
from fslm.serve import ServeSettings, create_app
from fslm.serve.state import retry_after
from fslm.stack import Stack

from .conftest import TINY_STACK, GatedEngine, wait_until

QUESTION = "What is the capital of France?"
OTHER = "How many legs does a spider have?"
LONG_ANSWER = {
    **TINY_STACK,
    "stages": [*TINY_STACK["stages"][:2], {**TINY_STACK["stages"][2], "generation": {"max_new_tokens": 24}}],
}
PIECE_DELAY = 0.05


class SlowStreams:
    """The real engine, with each streamed piece handed on PIECE_DELAY later (a slow CPU): lets a test see the first
    chunk reach the client while the answer stage is still generating. Text and tokens are the engine's own."""

    def __init__(self, engine):
        self._engine = engine
        self.generating = threading.Event()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate_stream(self, texts, params, adapter, on_text):
        def slow(row, piece):
            on_text(row, piece)
            time.sleep(PIECE_DELAY)

        self.generating.set()
        try:
            return self._engine.generate_stream(texts, params, adapter, slow)
        finally:
            self.generating.clear()


@pytest.fixture()
def long_stack(tiny_engine) -> Stack:
    return Stack(parse_stack_config(LONG_ANSWER), tiny_engine)


@pytest.fixture()
def server(long_stack):
    with running_server(create_app(long_stack, ServeSettings())) as url:
        yield url, long_stack


def client(url: str) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def ask(url: str, question: str = QUESTION, **kwargs):
    return client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}], **kwargs)


def test_stream_sends_tokens_while_the_answer_stage_generates(tiny_engine):
    slow = SlowStreams(tiny_engine)
    stack = Stack(parse_stack_config(LONG_ANSWER), slow)
    expected = Stack(parse_stack_config(LONG_ANSWER), tiny_engine).run(QUESTION)
    with running_server(create_app(stack, ServeSettings())) as url:
        plain = ask(url).choices[0].message.content
        stream = ask(url, stream=True, stream_options={"include_usage": True})
        pieces, generating_at_first, events = [], None, []
        for chunk in stream:
            if chunk.model_extra.get("fslm_event"):
                events.append(chunk.model_extra["fslm_event"])
            if chunk.choices and chunk.choices[0].delta.content:
                if generating_at_first is None:
                    generating_at_first = slow.generating.is_set()
                pieces.append(chunk.choices[0].delta.content)
        metrics = httpx.get(url + "/metrics").text
    assert plain == expected.answer
    assert "".join(pieces) == plain  # the streamed tokens join to the non-streamed greedy answer
    assert len(pieces) >= 4, pieces  # token by token, not one finished text
    assert generating_at_first is True  # the first piece arrived while the answer stage was still generating
    statuses = [e["status"] for e in events]
    assert statuses[:2] == ["queued", "running"] and statuses[-1] == "answering"
    stages = [e for e in events if e["status"] == "stage"]
    assert [e["stage"] for e in stages] == ["intent", "facts"]
    assert [e["output"] for e in stages] == [r.output for r in expected.trace[:2]]
    assert re.search(r"^fslm_time_to_first_token_seconds_count 1\.0$", metrics, re.M)


class HoldsSecondStage:
    """The real engine; its second generate call (the facts stage) waits until the test releases it."""

    def __init__(self, engine):
        self._engine = engine
        self.calls = 0
        self.held, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, texts, params, adapter=None):
        self.calls += 1
        if self.calls == 2:
            self.held.set()
            assert self.release.wait(30), "the test never released the second stage"
        return self._engine.generate(texts, params, adapter=adapter)


def test_a_stage_event_is_sent_while_later_stages_still_run(tiny_engine):
    engine = HoldsSecondStage(tiny_engine)
    stack = Stack(parse_stack_config(TINY_STACK), engine)
    body = {"model": "tiny", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    stages, released_before = [], None
    with running_server(create_app(stack, ServeSettings())) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as resp:
            for line in resp.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[len("data: ") :]).get("fslm_event") or {}
                if event.get("status") == "stage":
                    stages.append(event["stage"])
                    if event["stage"] == "intent":
                        wait_until(engine.held.is_set)  # facts is generating and cannot finish until released
                        released_before = engine.release.is_set()
                        engine.release.set()
    assert released_before is False  # intent's event reached the client while facts was still running
    assert stages == ["intent", "facts"]


def test_seed_makes_sampling_reproducible_and_n_gives_choices(server):
    url, stack = server
    greedy = stack.run(QUESTION)
    first = ask(url, temperature=1.0, seed=5, n=2)
    again = ask(url, temperature=1.0, seed=5, n=2)
    other = ask(url, temperature=1.0, seed=6, n=2)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.message.content for c in again.choices]  # same seed, same texts
    assert texts != [c.message.content for c in other.choices]
    assert texts[0] != texts[1]  # two draws, not one text twice
    assert greedy.answer not in texts
    trace = first.model_extra["fslm_trace"]["stages"]
    # earlier stages keep their YAML settings (greedy): the trace up to the answer is fslm run's
    assert [s["output"] for s in trace[:2]] == [r.output for r in greedy.trace[:2]]


def test_stop_and_max_tokens_apply_to_the_answer_stage(server):
    url, stack = server
    answer = stack.run(QUESTION).answer
    # a stop string from the middle of the greedy answer, not found earlier in it
    k = next(
        i
        for i in range(3, len(answer) - 2)
        if answer.find(answer[i : i + 2]) == i
        and answer[i : i + 2].isprintable()
        and "\ufffd" not in answer[i : i + 2]
        and answer[i : i + 2].strip() == answer[i : i + 2]
    )
    stopped = ask(url, stop=[answer[k : k + 2]]).choices[0]
    assert stopped.message.content == answer[:k].strip() and stopped.finish_reason == "stop"
    streamed = "".join(
        c.choices[0].delta.content or "" for c in ask(url, stop=[answer[k : k + 2]], stream=True) if c.choices
    )
    assert streamed == stopped.message.content  # nothing past the stop string was ever sent
    capped = ask(url, max_tokens=3)
    record = capped.model_extra["fslm_trace"]["stages"][-1]
    assert record["tokens_out"] == 3 and capped.choices[0].finish_reason == "length"
    engine, stage = stack.engine, stack.config.answer_stage
    direct = engine.generate([record["input"]], GenerationParams(max_new_tokens=3))[0]
    assert capped.choices[0].message.content == direct.text
    assert stage.generation.max_new_tokens == 24  # the request changed nothing in the served stack


def test_usage_and_fslm_cost_count_every_stage_and_every_choice(server):
    url, stack = server
    resp = ask(url, n=2, temperature=0.8, seed=1)
    stages = resp.model_extra["fslm_trace"]["stages"]
    cost = resp.model_extra["fslm_cost"]
    answer_in = stages[-1]["tokens_in"]
    assert resp.usage.prompt_tokens == sum(s["tokens_in"] for s in stages) + answer_in  # the answer input read twice
    outs = [s["tokens_out"] for s in stages[:-1]]
    assert resp.usage.completion_tokens == sum(outs) + cost["stages"][-1]["tokens_out"]
    assert [c["stage"] for c in cost["stages"]] == ["intent", "facts", "answer"]
    assert cost["tokens_in"] == resp.usage.prompt_tokens and cost["tokens_out"] == resp.usage.completion_tokens
    assert all(c["seconds"] > 0 for c in cost["stages"])
    plain = ask(url)
    expected = stack.run(QUESTION)
    assert plain.usage.prompt_tokens == sum(r.tokens_in for r in expected.trace)
    assert plain.usage.completion_tokens == sum(r.tokens_out for r in expected.trace)


def test_text_completions_endpoint(server):
    url, stack = server
    c = client(url)
    one = c.completions.create(model="tiny", prompt=QUESTION)
    assert one.object == "text_completion" and one.choices[0].text == stack.run(QUESTION).answer
    both = c.completions.create(model="tiny", prompt=[QUESTION, OTHER], max_tokens=5)
    expected = Stack(stack.config, stack.engine).run_batch([QUESTION, OTHER])
    assert [ch.index for ch in both.choices] == [0, 1]
    assert [len(ch.text) <= len(e.answer) for ch, e in zip(both.choices, expected, strict=True)] == [True, True]
    traces = both.model_extra["fslm_trace"]
    assert [t["prompt"] for t in traces] == [QUESTION, OTHER]
    assert both.usage.prompt_tokens == sum(s["tokens_in"] for t in traces for s in t["stages"])
    streamed = c.completions.create(model="tiny", prompt=QUESTION, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == one.choices[0].text
    with pytest.raises(openai.BadRequestError) as err:
        c.completions.create(model="tiny", prompt=QUESTION, echo=True)
    assert err.value.body["code"] == "unsupported_parameter" and err.value.body["param"] == "echo"
    with pytest.raises(openai.BadRequestError) as err:
        c.completions.create(model="tiny", prompt=QUESTION * 40)
    assert err.value.body["code"] == "context_length_exceeded"


def test_retry_after_follows_measured_batch_times(tiny_engine):
    assert retry_after([], 0, 0, 16) == 1
    assert retry_after([10.0, 20.0], 4, 1, 2) == 45  # 2 batches waiting + the running one, 15 s each
    assert retry_after([200.0], 1, 1, 16) == 60 and retry_after([0.01], 1, 1, 16) == 1
    engine = GatedEngine(tiny_engine)
    stack = Stack(parse_stack_config(TINY_STACK), engine)
    app = create_app(stack, ServeSettings(max_batch=1, queue_size=1))
    state = app.state.fslm
    with running_server(app) as url:
        ask(url)  # one measured batch
        measured = list(state.queue.recent_batch_seconds)
        assert len(measured) == 1 and measured[0] > 0
        engine.gate.clear()
        engine.entered.clear()
        threads = [threading.Thread(target=lambda: ask(url)) for _ in range(2)]
        threads[0].start()
        assert engine.entered.wait(20)  # the first holds the worker
        threads[1].start()
        wait_until(lambda: state.queue.depth == 1)  # the second fills the queue
        with pytest.raises(openai.RateLimitError) as err:
            ask(url)
        engine.gate.set()
        for t in threads:
            t.join(30)
    header = err.value.response.headers["retry-after"]
    assert int(header) == retry_after(measured, 1, 1, 1)
    assert err.value.body["code"] == "rate_limit_exceeded"


def test_viewer_content_security_policy_allows_exactly_its_inline_code(server):
    url, _ = server
    resp = httpx.get(url + "/ui")
    csp = dict(part.strip().split(" ", 1) for part in resp.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    page = resp.text
    for kind in ("script", "style"):
        blocks = re.findall(rf"<{kind}>(.*?)</{kind}>", page, re.S)
        assert blocks
        hashes = {f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks}
        assert set(csp[f"{kind}-src"].split()) == hashes
    assert "unsafe-inline" not in resp.headers["content-security-policy"]


def test_bench_ttft_client_measures_a_live_stream(server):
    """benchmarks/serve_ttft.py (the load benchmark's TTFT phase) against a live server: it finds the first token,
    counts the stage events and checks the streamed text against the non-streamed answer (no timing is asserted)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from serve_ttft import run_ttft

    url, stack = server
    ttft = run_ttft(url, "tiny", [QUESTION], 60, {0: stack.run(QUESTION).answer})
    rec, summary = ttft["records"][0], ttft["summary"]
    assert rec["status"] == 200 and 0 < rec["first_event_s"] <= rec["ttft_s"] <= rec["total_s"]
    assert rec["stage_events"] == 2 and rec["pieces"] >= 2
    assert summary["ok"] == 1 and summary["same_as_non_streamed"] == "1/1"


def test_a_stack_whose_answer_is_not_a_plain_stage_runs_whole(tiny_engine):
    """Two final stages: the answer stage cannot be generated apart, so the whole stack runs with the request's
    settings on its final stages; n runs it n times; a stream gets the answer whole, at the end."""
    stages = [
        *TINY_STACK["stages"][:1],
        {**TINY_STACK["stages"][1], "final": True},
        {**TINY_STACK["stages"][2], "final": True},
    ]
    stack = Stack(parse_stack_config({**TINY_STACK, "stages": stages}), tiny_engine)
    expected = stack.run(QUESTION)
    with running_server(create_app(stack, ServeSettings())) as url:
        plain = ask(url, seed=3)  # greedy (temperature 0) through the whole-stack path
        streamed = [c for c in ask(url, stream=True) if c.choices and c.choices[0].delta.content]
        sampled = ask(url, temperature=1.0, seed=3, n=2)
        again = ask(url, temperature=1.0, seed=3, n=2)
    assert plain.choices[0].message.content == expected.answer
    assert "".join(c.choices[0].delta.content for c in streamed) == expected.answer
    texts = [c.message.content for c in sampled.choices]
    assert len(texts) == 2 and texts == [c.message.content for c in again.choices]
    one_run = sum(s["tokens_in"] for s in sampled.model_extra["fslm_trace"]["stages"])
    assert sampled.usage.prompt_tokens > one_run  # the second choice's run is counted too


OPTIONS_STACK = {
    **TINY_STACK,
    "max_prompt_tokens": 256,
    "stages": [
        {"name": "pick", "score": {"format": "raw"}, "when": "has_options", "final": True},
        *[{**s, "when": "no_options"} for s in TINY_STACK["stages"][:2]],
        {**LONG_ANSWER["stages"][2], "when": "no_options", "final": True},
    ],
}
MC = "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus"


def test_like_the_default_stack_free_form_prompts_stream_and_option_prompts_are_scored(tiny_engine):
    """The default stack's shape: prompts with options are answered by a scorer, others by a generate stage. The
    generate stage streams token by token (with when: no_options); the scorer's pick arrives whole."""
    stack = Stack(parse_stack_config(OPTIONS_STACK), tiny_engine)
    free, scored = stack.run(QUESTION), stack.run(MC)
    with running_server(create_app(stack, ServeSettings())) as url:
        pieces = [c.choices[0].delta.content for c in ask(url, stream=True) if c.choices and c.choices[0].delta.content]
        picked = [
            c.choices[0].delta.content for c in ask(url, MC, stream=True) if c.choices and c.choices[0].delta.content
        ]
        sampled = ask(url, MC, temperature=1.0, seed=2)
        split = ask(url, seed=1)  # greedy, but through the split path (earlier stages, then the answer stage apart)
    assert "".join(pieces) == free.answer and len(pieces) >= 4
    assert picked == [scored.answer] and scored.answer in ("Mars", "Jupiter", "Venus")
    assert sampled.choices[0].message.content == scored.answer  # scoring has nothing to sample
    # the split path's trace is fslm run's, field for field (seconds aside)
    served = [{k: v for k, v in s.items() if k != "seconds"} for s in split.model_extra["fslm_trace"]["stages"]]
    direct = [{k: v for k, v in asdict(r).items() if k != "seconds"} for r in free.trace]
    assert json.loads(json.dumps(direct)) == served and split.choices[0].message.content == free.answer


def test_vanishing_temperature_or_top_p_decode_greedily(server):
    """Found by the schema fuzzer: logits / 1e-188 overflow, and top_p 2e-309 is 0 in float32 (every token dropped).
    Both are greedy in effect, and are answered greedily instead of failing the batch."""
    url, stack = server
    greedy = stack.run(QUESTION).answer
    for extra in ({"temperature": 2.2e-188}, {"temperature": 0.001, "top_p": 2.2e-309}, {"top_p": 0}):
        resp = ask(url, n=2, **extra)
        assert [c.message.content for c in resp.choices] == [greedy, greedy], extra
