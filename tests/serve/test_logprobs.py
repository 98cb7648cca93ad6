"""OpenAI `logprobs` from fslm serve: the answer stage's tokens with the model's own log-probabilities."""

from __future__ import annotations

import httpx
import pytest
from live_server import running_server
from openai import OpenAI

from fslm.config import parse_stack_config
from fslm.engine import GenerationParams
from fslm.serve import ServeSettings, create_app
from fslm.stack import Stack

from .conftest import TINY_STACK

QUESTION = "What is the capital of France?"
SCORED = {
    "name": "scored",
    "base_model": "tiny",
    "stages": [
        {"name": "pick", "score": {"format": "raw"}, "when": "has_options", "final": True},
        {"name": "answer", "instruction": "Answer.", "when": "no_options", "final": True},
    ],
}


class NoLogprobs:
    """The real engine seen through the plain Engine protocol only (a backend without the capability)."""

    def __init__(self, engine):
        self._e = engine
        self.model_ref, self.context_window, self.stats = engine.model_ref, engine.context_window, engine.stats

    params = property(lambda self: self._e.params)

    def add_adapter(self, name, path):
        self._e.add_adapter(name, path)

    def adapters(self):
        return self._e.adapters()

    def render_chat(self, messages):
        return self._e.render_chat(messages)

    def count_tokens(self, text):
        return self._e.count_tokens(text)

    def generate(self, texts, params, adapter=None):
        return self._e.generate(texts, params, adapter=adapter)

    def score(self, contexts, continuations, adapter=None):
        return self._e.score(contexts, continuations, adapter=adapter)


@pytest.fixture()
def server(tiny_engine):
    stack = Stack(parse_stack_config(TINY_STACK), tiny_engine)
    with running_server(create_app(stack, ServeSettings())) as url:
        yield url, stack


def client(url: str) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_logprobs_are_the_answer_stages_tokens(server, tiny_engine):
    url, stack = server
    resp = client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTION}], logprobs=True, top_logprobs=3
    )
    choice = resp.choices[0]
    content = choice.logprobs.content
    assert content and "".join(t.token for t in content).strip() == choice.message.content
    joined = b"".join(bytes(t.bytes) for t in content)  # exact even where a character spans tokens
    assert joined.decode("utf-8", errors="replace").strip() == choice.message.content
    record = resp.model_extra["fslm_trace"]["stages"][-1]
    params = stack.params_for(stack.config.stage("answer"))
    direct = tiny_engine.generate_logprobs([record["input"]], params, None, top=3)[0]
    assert [t.logprob for t in content] == pytest.approx([t.logprob for t in direct.tokens], abs=1e-4)
    for t in content:
        assert len(t.top_logprobs) == 3 and (t.bytes == list(t.token.encode("utf-8")) or "\ufffd" in t.token)
        values = [a.logprob for a in t.top_logprobs]
        assert values == sorted(values, reverse=True) and t.logprob <= values[0] + 1e-6
        assert (t.top_logprobs[0].token, t.top_logprobs[0].logprob) == (t.token, pytest.approx(t.logprob))  # greedy


def test_without_logprobs_the_field_is_null(server):
    url, _ = server
    resp = client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}])
    assert resp.choices[0].logprobs is None


def test_text_completion_logprobs_and_streamed_chat_logprobs(server):
    url, _ = server
    text = client(url).completions.create(model="tiny", prompt=QUESTION, logprobs=2)
    lp = text.choices[0].logprobs
    assert "".join(lp.tokens).strip() == text.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.text_offset == sorted(lp.text_offset) and all(1 <= len(top) <= 2 for top in lp.top_logprobs)
    stream = client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTION}], logprobs=True, stream=True
    )
    pieces, streamed = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed = chunk.choices[0].logprobs.content
    assert streamed and "".join(t.token for t in streamed).strip() == "".join(pieces)
    assert all(t.top_logprobs == [] for t in streamed)


def bad(url: str, path: str, body: dict) -> dict:
    resp = httpx.post(url + path, json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    return resp.json()["error"]


def test_bad_logprob_requests_are_400s(server):
    url, _ = server
    chat = {"messages": [{"role": "user", "content": QUESTION}]}
    assert bad(url, "/v1/chat/completions", {**chat, "top_logprobs": 2})["param"] == "top_logprobs"
    assert bad(url, "/v1/chat/completions", {**chat, "logprobs": True, "top_logprobs": 21})["param"] == "top_logprobs"
    assert bad(url, "/v1/completions", {"prompt": QUESTION, "logprobs": 6})["param"] == "logprobs"


def test_an_answer_that_is_not_generated_has_no_logprobs(tiny_engine):
    stack = Stack(parse_stack_config(SCORED), tiny_engine)
    with running_server(create_app(stack, ServeSettings())) as url:
        options = {"messages": [{"role": "user", "content": "Which is red?\nA. grass\nB. blood"}], "logprobs": True}
        err = bad(url, "/v1/chat/completions", options)
        assert (err["code"], err["param"], err["type"]) == (
            "unsupported_parameter",
            "logprobs",
            "invalid_request_error",
        )
        assert "not one generate stage" in err["message"]
        ok = httpx.post(  # the same stack's free-form branch is one generate stage: it has them
            url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": QUESTION}], "logprobs": True},
            timeout=60,
        )
        assert ok.status_code == 200 and ok.json()["choices"][0]["logprobs"]["content"]


def test_an_engine_without_the_capability_is_a_400(tiny_engine):
    stack = Stack(parse_stack_config(TINY_STACK), NoLogprobs(tiny_engine))
    with running_server(create_app(stack, ServeSettings())) as url:
        err = bad(url, "/v1/completions", {"prompt": QUESTION, "logprobs": 0})
        assert err["code"] == "unsupported_parameter" and "does not return token log-probabilities" in err["message"]
        plain = httpx.post(url + "/v1/completions", json={"prompt": QUESTION}, timeout=60)
        assert plain.status_code == 200 and plain.json()["choices"][0]["logprobs"] is None


def test_params_used_are_the_answer_stages(tiny_engine):
    """The helper the first test relies on: the stack's own answer params (no request override)."""
    stack = Stack(parse_stack_config(TINY_STACK), tiny_engine)
    assert stack.params_for(stack.config.stage("answer")) == GenerationParams(max_new_tokens=8)
