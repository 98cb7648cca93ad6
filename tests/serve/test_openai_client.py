"""The official `openai` client works unchanged against `fslm serve` (real uvicorn, tiny model)."""

from __future__ import annotations

import openai
import pytest
from live_server import running_server
from openai import OpenAI

from fslm.serve import ServeSettings, create_app

QUESTION = "What is the capital of France?"


@pytest.fixture()
def server(tiny_stack):
    with running_server(create_app(tiny_stack, ServeSettings())) as url:
        yield url, tiny_stack


def client(url: str, key: str = "unused") -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_non_streaming_answer_and_trace(server):
    url, stack = server
    expected = stack.run(QUESTION)
    resp = client(url).chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    )
    assert resp.object == "chat.completion" and resp.model == "tiny"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == expected.answer  # greedy: the server adds nothing, loses nothing
    assert resp.choices[0].finish_reason in ("stop", "length")
    trace = resp.model_extra["fslm_trace"]
    assert [s["stage"] for s in trace["stages"]] == ["intent", "facts", "answer"]
    assert [s["output"] for s in trace["stages"]] == [r.output for r in expected.trace]
    assert QUESTION in trace["stages"][0]["input"] and trace["prompt"] == QUESTION
    assert resp.usage.prompt_tokens == sum(r.tokens_in for r in expected.trace)
    assert resp.usage.completion_tokens == sum(r.tokens_out for r in expected.trace)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_streaming_pieces_join_to_the_answer(server):
    url, stack = server
    expected = stack.run(QUESTION).answer
    chunks = list(
        client(url).chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["fslm_trace"]["answer"] == expected
    events = [c.model_extra.get("fslm_event", {}).get("status") for c in chunks]
    assert events[0] == "queued" and "running" in events
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_trace_can_be_turned_off_per_request_and_per_server(server, tiny_stack):
    url, _ = server
    resp = client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTION}], extra_body={"fslm_trace": False}
    )
    assert "fslm_trace" not in (resp.model_extra or {})
    with running_server(create_app(tiny_stack, ServeSettings(trace=False))) as quiet:
        resp = client(quiet).chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}])
        assert resp.choices[0].message.content and "fslm_trace" not in (resp.model_extra or {})


def test_models_and_unknown_model(server):
    url, _ = server
    c = client(url)
    assert [m.id for m in c.models.list()] == ["tiny"]
    assert c.models.retrieve("tiny").owned_by == "fslm"
    with pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_api_key_through_the_client(tiny_stack):
    with running_server(create_app(tiny_stack, ServeSettings(api_key="s3cret"))) as url:
        with pytest.raises(openai.AuthenticationError) as err:
            client(url, "wrong").models.list()
        assert err.value.body["code"] == "invalid_api_key"
        resp = client(url, "s3cret").chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": QUESTION}]
        )
        assert resp.choices[0].message.content is not None
