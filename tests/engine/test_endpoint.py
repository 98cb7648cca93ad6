"""The "openai" engine against real HTTP servers: fslm's own `fslm serve` on the tiny model (its answers must equal
the local HF engine's for the same greedy request), and small scripted servers that fail, stall, or echo logprobs."""

from __future__ import annotations

import time

import pytest
from live_server import Upstream, closed_port_url, running_server

from fslm.config import parse_stack_config
from fslm.engine import Engine, GenerationParams, load_engine
from fslm.engine.endpoint import EndpointEngine, parse_messages
from fslm.errors import ConfigError, EndpointError, InputError
from fslm.serve import ServeSettings, create_app
from fslm.stack import Stack

SERVED = {
    "name": "served",
    "base_model": "tiny",
    "max_prompt_tokens": 400,
    "stages": [{"name": "answer", "instruction": "Answer.", "generation": {"max_new_tokens": 8}}],
}
QUESTIONS = ["What is the capital of France?", "Name a colour."]
GREEDY = GenerationParams(max_new_tokens=8)


@pytest.fixture(scope="module")
def served(tiny_engine):
    """`fslm serve` of a one-stage stack on the tiny model: a chat request's last user message is its prompt."""
    stack = Stack(parse_stack_config(SERVED), tiny_engine)
    with running_server(create_app(stack, ServeSettings(model_name="tiny-served", log=False)), path="/v1") as url:
        yield url, stack


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer."}, {"role": "user", "content": question}]


def ok(text: str = "hello world", reason: str = "stop", usage: dict | None = None) -> tuple[int, dict]:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
    return 200, {"choices": [choice], "usage": usage or {"prompt_tokens": 5, "completion_tokens": 2}}


def test_chat_requests_answer_as_the_local_engine_does(served, tiny_engine):
    url, stack = served
    engine = load_engine("tiny-served", backend="openai", base_url=url)
    assert isinstance(engine, EndpointEngine) and isinstance(engine, Engine)
    texts = [engine.render_chat(chat(q)) for q in QUESTIONS]
    assert [parse_messages(t) for t in texts] == [chat(q) for q in QUESTIONS]  # the exact messages, kept in the text
    made = engine.generate(texts, GREEDY)
    local = tiny_engine.generate([stack.stage_input(0, q, {}) for q in QUESTIONS], GREEDY)
    assert [g.text for g in made] == [g.text for g in local] and any(g.text for g in made)
    assert [g.finish_reason for g in made] == [g.finish_reason for g in local]
    assert [(g.tokens_in, g.tokens_out) for g in made] == [(g.tokens_in, g.tokens_out) for g in local]  # from usage
    assert engine.model_ref == f"tiny-served@{url}" and engine.stats.generated_tokens == sum(g.tokens_out for g in made)


def test_raw_text_goes_to_completions(served, tiny_engine):
    url, stack = served
    engine = EndpointEngine(url, "tiny-served")
    [made] = engine.generate([QUESTIONS[0]], GREEDY)  # never rendered by render_chat: a raw prompt
    assert parse_messages(QUESTIONS[0]) is None
    assert (
        made.text
        == stack.run(QUESTIONS[0]).answer
        == tiny_engine.generate([stack.stage_input(0, QUESTIONS[0], {})], GREEDY)[0].text
    )


def test_fslm_serve_cannot_score_and_says_so(served):
    url, _ = served
    engine = EndpointEngine(url, "tiny-served")
    with pytest.raises(InputError, match=r"endpoint http://127\.0\.0\.1:\d+/v1/completions cannot score .*echo"):
        engine.score(["Question: 2+2?\nAnswer:"], [" 4"])
    with pytest.raises(InputError, match="cannot score chat-format contexts"):
        engine.score([engine.render_chat(chat("2+2?"))], [" 4"])


def test_an_unknown_served_model_is_one_error_at_once(served):
    url, _ = served
    engine = EndpointEngine(url, "no-such-model")
    with pytest.raises(EndpointError, match=r"/v1/chat/completions answered HTTP 404: .*does not exist") as err:
        engine.generate([engine.render_chat(chat("Hi"))], GREEDY)
    assert err.value.status == 404 and engine.client.retries == 0


def test_500s_are_retried_then_one_error_naming_the_url():
    with Upstream(lambda body, hit: (500, {"error": "boom"})) as up:
        engine = EndpointEngine(up.url, "m", attempts=3, max_backoff=0.05)
        t0 = time.monotonic()
        with pytest.raises(
            EndpointError, match=rf"endpoint {up.url}/chat/completions still failing after 3 attempts \(.*HTTP 500"
        ):
            engine.generate([engine.render_chat(chat("Hi"))], GREEDY)
    assert up.hits == 3 and engine.client.retries == 2 and time.monotonic() - t0 < 5


def test_transient_failures_recover():
    with Upstream(lambda body, hit: (503, {}) if hit <= 2 else ok("fine")) as up:
        engine = EndpointEngine(up.url, "m", attempts=4, max_backoff=0.05)
        [made] = engine.generate([engine.render_chat(chat("Hi"))], GREEDY)
    assert made.text == "fine" and engine.client.retries == 2 and (made.tokens_in, made.tokens_out) == (5, 2)


def test_a_stalled_server_times_out_retries_and_fails_in_bounded_time():
    with Upstream(lambda body, hit: None) as up:
        engine = EndpointEngine(up.url, "m", timeout=0.3, attempts=2, max_backoff=0.05)
        t0 = time.monotonic()
        with pytest.raises(
            EndpointError,
            match=rf"{up.url}/chat/completions still failing after 2 attempts \(no answer within the 0.3 s timeout",
        ):
            engine.generate([engine.render_chat(chat("Hi"))], GREEDY)
        assert time.monotonic() - t0 < 5 and up.hits == 2


def test_an_unreachable_server_is_one_error_naming_the_url():
    url = closed_port_url()
    engine = EndpointEngine(url, "m", attempts=2, max_backoff=0.05)
    with pytest.raises(
        EndpointError, match=rf"endpoint {url}/completions still failing after 2 attempts \(ConnectError"
    ):
        engine.generate(["raw prompt"], GREEDY)


def test_adapters_are_served_model_names_and_requests_carry_the_settings(monkeypatch):
    monkeypatch.setenv("MY_ENDPOINT_KEY", "sekrit")
    replies = {"Hi": ok("one STOP5 two", "length"), "Yo": ok("short", "length", usage={})}
    with Upstream(lambda body, hit: replies[body["messages"][-1]["content"]], delay=0.1) as up:
        engine = EndpointEngine.from_ref("base-model", base_url=up.url, api_key_env="MY_ENDPOINT_KEY", concurrency=2)
        engine.add_adapter("facts", "/srv/adapters/facts")
        params = GenerationParams(max_new_tokens=5, stop=("S1", "S2", "S3", "S4", "STOP5"), seed=3)
        made = engine.generate([engine.render_chat(chat(q)) for q in ["Hi", "Yo"] * 3], params, adapter="facts")
        engine.generate([engine.render_chat(chat("Hi"))], params)
    assert {b["model"] for b in up.bodies[:6]} == {"facts"} and up.bodies[6]["model"] == "base-model"
    assert up.bodies[0]["stop"] == ["S1", "S2", "S3", "S4"] and up.bodies[0]["seed"] == 3
    assert up.bodies[0]["max_tokens"] == 5 and up.bodies[0]["temperature"] == 0.0
    assert made[0].text == "one " and made[0].finish_reason == "stop"  # the fifth stop string, applied here
    assert made[1].finish_reason == "length" and made[1].tokens_out == 2  # no usage: estimated from the text
    assert up.max_in_flight <= 2 and all(h.get("Authorization") == "Bearer sekrit" for h in up.headers)
    assert engine.adapters() == ["facts"] and engine.stats.by_adapter == {"facts": 6, "base": 1}
    with pytest.raises(InputError, match="adapter 'intent' was never added"):
        engine.generate(["x"], params, adapter="intent")


def test_scores_come_from_echoed_prompt_logprobs():
    context, continuation = "Q: 2+2?\nA:", " 4 ok"

    def echo(body, hit):
        assert body["echo"] is True and body["logprobs"] == 1 and body["prompt"] == context + continuation
        tokens = ["Q", ": 2+2?\nA", ":", " 4", " ok", "!"]  # the last one is the generated token
        offsets = [0, 1, 9, 10, 12, 15]
        lps = [None, -1.0, -0.5, -0.25, -2.0, -0.1]
        tops = [None, {"x": -1.0}, {":": -0.5}, {" 4": -0.25, " 5": -3.0}, {" ok": -2.0}, {"!": -0.1}]
        logprobs = {"tokens": tokens, "text_offset": offsets, "token_logprobs": lps, "top_logprobs": tops}
        return 200, {"choices": [{"text": context + continuation + "!", "logprobs": logprobs}]}

    with Upstream(echo) as up:
        [score] = EndpointEngine(up.url, "m").score([context], [continuation])
    assert (score.logprob, score.n_tokens, score.is_greedy, score.n_chars) == (-2.25, 2, True, 5)


def test_settings_are_checked_before_any_request(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="no server URL.*OPENAI_BASE_URL"):
        load_engine("m", backend="openai")
    with pytest.raises(ConfigError, match="must start with http"):
        EndpointEngine("ftp://host/v1", "m")
    with pytest.raises(ConfigError, match="api_key_env NOPE_NOT_SET: the environment variable"):
        EndpointEngine.from_ref("m", base_url="http://127.0.0.1:1/v1", api_key_env="NOPE_NOT_SET")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    engine = load_engine("m", backend="openai")
    assert engine.model_ref == "m@http://127.0.0.1:9/v1" and engine.count_tokens("abcdefgh") == 2
