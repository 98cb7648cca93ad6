"""Every bad request is a 4xx with an OpenAI-style error body naming the problem; none reaches the model."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from fslm.serve import ServeSettings, create_app

GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
LONG = "Paris " * 200  # ~400 tokens > 128, the tiny stack's max_prompt_tokens


@pytest.fixture()
def api(tiny_stack):
    app = create_app(tiny_stack, ServeSettings(max_body_bytes=4096, max_new_tokens=100))
    with TestClient(app) as c:
        yield c, tiny_stack


def with_(**changes):
    return {**GOOD, **changes}


CASES = [
    # (id, body bytes or json object, status, code, param)
    ("malformed_json", b'{"model": "tiny", "messages": [', 400, "invalid_json", None),
    ("not_utf8", b"\xff\xfe{}", 400, "invalid_json", None),
    ("body_not_object", [1, 2], 400, "invalid_json", None),
    ("missing_messages", {"model": "tiny"}, 400, "missing_field", "messages"),
    ("empty_messages", with_(messages=[]), 400, "invalid_value", "messages"),
    ("messages_wrong_type", with_(messages="hello"), 400, "invalid_value", "messages"),
    ("message_not_object", with_(messages=["hello"]), 400, "invalid_value", "messages.0"),
    ("unknown_role", with_(messages=[{"role": "robot", "content": "hi"}]), 400, "invalid_value", "messages.0.role"),
    (
        "content_wrong_type",
        with_(messages=[{"role": "user", "content": 42}]),
        400,
        "invalid_value",
        "messages.0.content.str",
    ),
    ("empty_content", with_(messages=[{"role": "user", "content": "   "}]), 400, "empty_prompt", "messages.0.content"),
    ("null_content", with_(messages=[{"role": "user", "content": None}]), 400, "empty_prompt", "messages.0.content"),
    (
        "last_not_user",
        with_(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
        400,
        "invalid_value",
        "messages.1.role",
    ),
    (
        "image_part",
        with_(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "unsupported_content",
        "messages.0.content.0.type",
    ),
    ("stream_not_bool", with_(stream="yes"), 400, "invalid_value", "stream"),
    ("max_tokens_string", with_(max_tokens="10"), 400, "invalid_value", "max_tokens"),
    ("max_tokens_zero", with_(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("max_tokens_over_limit", with_(max_tokens=101), 400, "invalid_value", "max_tokens"),
    (
        "max_completion_tokens_over_limit",
        with_(max_completion_tokens=500),
        400,
        "invalid_value",
        "max_completion_tokens",
    ),
    ("temperature_out_of_range", with_(temperature=9.0), 400, "invalid_value", "temperature"),
    ("n_over_the_limit", with_(n=17), 400, "invalid_value", "n"),
    ("n_zero", with_(n=0), 400, "invalid_value", "n"),
    ("top_p_out_of_range", with_(top_p=1.5), 400, "invalid_value", "top_p"),
    ("negative_temperature", with_(temperature=-0.1), 400, "invalid_value", "temperature"),
    ("five_stop_strings", with_(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value", "stop"),
    ("empty_stop_string", with_(stop=""), 400, "invalid_value", "stop"),
    ("seed_not_integer", with_(seed=1.5), 400, "invalid_value", "seed"),
    ("seed_too_large", with_(seed=2**64), 400, "invalid_value", "seed"),
    ("top_logprobs_without_logprobs", with_(top_logprobs=2), 400, "invalid_value", "top_logprobs"),
    ("top_logprobs_over_the_limit", with_(logprobs=True, top_logprobs=21), 400, "invalid_value", "top_logprobs"),
    ("logprobs_not_bool", with_(logprobs="yes"), 400, "invalid_value", "logprobs"),
    ("tools", with_(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "unsupported_parameter", "tools"),
    ("unknown_model", with_(model="gpt-4o"), 404, "model_not_found", "model"),
    ("model_wrong_type", with_(model=3), 400, "invalid_value", "model"),
    (
        "prompt_too_long",
        with_(messages=[{"role": "user", "content": LONG}]),
        400,
        "context_length_exceeded",
        "messages",
    ),
    ("body_too_large", with_(messages=[{"role": "user", "content": "x" * 5000}]), 413, "request_too_large", None),
    # Hostile bodies an outside probe turned into 500s: each is a 400 now, decided before any parsing blows up.
    ("lone_surrogate_escape", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', 400, "invalid_json", None),
    ("deeply_nested_array", b"[" * 2000 + b"]" * 2000, 400, "invalid_json", None),
    ("deeply_nested_field", b'{"messages": ' + b"[" * 1500 + b"]" * 1500 + b"}", 400, "invalid_json", None),
    ("invalid_utf8_inside", b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', 400, "invalid_json", None),
    ("max_tokens_float", with_(max_tokens=1e308), 400, "invalid_value", "max_tokens"),
    ("max_tokens_huge_int", with_(max_tokens=10**100), 400, "invalid_value", "max_tokens"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_openai_error(api, case):
    client, stack = api
    name, body, status, code, param = case
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param
    assert error["type"] == "invalid_request_error" and len(error["message"]) > 10
    if param:
        assert param.split(".")[0] in error["message"]  # the message names the field, not just the code


def test_bad_requests_never_reach_the_worker(api):
    client, _ = api
    for _, body, *_ in CASES:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    metrics = client.get("/metrics").text
    assert "fslm_batch_size_count 0.0" in metrics
    assert 'fslm_rejected_requests_total{reason="bad_request"}' in metrics


def test_declared_content_length_over_limit_is_refused_before_reading(api):
    client, _ = api
    resp = client.post("/v1/chat/completions", content=b"{}", headers={"content-length": "999999"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


def test_unknown_route_and_method_are_openai_errors(api):
    client, _ = api
    resp = client.get("/v1/nothing")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = client.get("/v1/chat/completions")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    resp = client.get("/v1/traces", params={"limit": "many"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "limit"


def test_history_is_prepended_and_system_ignored(api):
    client, stack = api
    messages = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Which planet is largest?"},
        {"role": "assistant", "content": "Jupiter."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "How many legs"}, {"type": "text", "text": "does a spider have?"}],
        },
    ]
    resp = client.post("/v1/chat/completions", json=with_(messages=messages, extra_field_from_new_client=True))
    assert resp.status_code == 200, resp.text
    prompt = resp.json()["fslm_trace"]["prompt"]
    assert prompt == (
        "Earlier conversation:\nUser: Which planet is largest?\nAssistant: Jupiter.\n\n"
        "Current request:\nHow many legs\ndoes a spider have?"
    )
    assert "pirate" not in json.dumps(resp.json()["fslm_trace"])
    assert resp.json()["choices"][0]["message"]["content"] == stack.run(prompt).answer


def test_max_tokens_caps_the_answer_stage(api):
    client, stack = api
    resp = client.post("/v1/chat/completions", json=with_(max_tokens=2))
    assert resp.status_code == 200
    stages = resp.json()["fslm_trace"]["stages"]
    assert stages[-1]["tokens_out"] <= 2 and stages[0]["stage"] == "intent"
    assert stack.config.stages[-1].generation.max_new_tokens == 8  # the served stack itself is untouched


def test_a_chunked_body_over_the_limit_is_refused_without_reading_it_all(api):
    """No Content-Length (chunked transfer): the limit is enforced while reading, not trusted from a header."""
    client, _ = api

    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}]}'

    resp = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("key", ["", "   ", "\n"])
def test_a_blank_api_key_is_a_startup_error_not_an_open_server(tiny_stack, key):
    from fslm.errors import ConfigError

    with pytest.raises(ConfigError, match="api_key is set but empty"):
        create_app(tiny_stack, ServeSettings(api_key=key))


def test_a_blank_fslm_api_key_makes_fslm_serve_exit_2(monkeypatch):
    from typer.testing import CliRunner

    from fslm.cli import app
    from fslm.settings import reset_settings

    monkeypatch.setenv("FSLM_API_KEY", "  ")
    reset_settings()
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: FSLM_API_KEY is set but empty")


def test_a_number_past_pythons_digit_limit_is_a_400(tiny_stack):
    """json.loads raises ValueError on integers of more than 4300 digits (CVE-2020-10735's limit): not a 500."""
    app = create_app(tiny_stack, ServeSettings(max_body_bytes=8192))
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}"
    with TestClient(app) as client:
        resp = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    assert "unreadable number" in resp.json()["error"]["message"]
