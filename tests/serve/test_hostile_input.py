"""Requests built to break the server, below what an HTTP client library would send: raw ASGI messages (odd headers,
a client that hangs up or stalls mid-body), raw sockets against real uvicorn (chunked bodies), hostile JSON. Each is a
4xx with an OpenAI error body, answered without reading more than the limit, and never logged as a server error."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from fastapi.testclient import TestClient
from live_server import running_server

from fslm.errors import ConfigError
from fslm.serve import ServeSettings, create_app
from fslm.serve.app import prepare_serve

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}
GOOD = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
BODY = json.dumps(GOOD).encode()


@pytest.fixture()
def client(tiny_stack):
    with TestClient(create_app(tiny_stack, ServeSettings(max_new_tokens=100))) as c:
        yield c


def error_of(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error


@pytest.fixture()
def no_server_errors(caplog):
    """Fails the test if anything was logged at ERROR: a client's mistake must not look like a server fault."""
    caplog.set_level(logging.INFO)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# ---- raw ASGI: what an HTTP library would not let a test send --------------------------------------------------------


def asgi_post(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes], *, end: str = "complete"):
    """POST through the ASGI interface directly; `end` says what follows the chunks: "complete" (the last body
    message), "disconnect" (the client hangs up) or "stall" (nothing, ever). Returns (status, headers, JSON body)."""
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    if end == "complete":
        messages.append({"type": "http.request", "body": b"", "more_body": False})
    elif end == "disconnect":
        messages.append({"type": "http.disconnect"})
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # a stalled client: only the server's own deadline ends this

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": CHAT,
        "raw_path": CHAT.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body)


@pytest.mark.parametrize(
    "length",
    [
        pytest.param("\xb2".encode("latin-1"), id="superscript-two"),  # "²".isdigit() is True; int("²") raises
        pytest.param(b"9" * 5000, id="5000-digits"),  # int() refuses more than 4300 digits
        pytest.param(b"0" * 30 + b"99999999", id="leading-zeros"),
    ],
)
def test_odd_content_lengths_are_4xx_not_500(tiny_stack, no_server_errors, length):
    """uvicorn refuses these itself; behind another ASGI server (create_app hosted elsewhere) the app must too."""
    app = create_app(tiny_stack, ServeSettings(max_body_bytes=4096))
    status, _, body = asgi_post(app, [(b"content-type", b"application/json"), (b"content-length", length)], [BODY])
    assert (status, body["error"]["code"]) in {(400, "invalid_header"), (413, "request_too_large")}


def test_a_client_hanging_up_mid_body_is_not_a_server_error(tiny_stack, no_server_errors):
    app = create_app(tiny_stack, ServeSettings())
    status, _, body = asgi_post(app, [(b"content-type", b"application/json")], [BODY[:10]], end="disconnect")
    assert status == 400 and body["error"]["code"] == "incomplete_body"


def test_a_stalled_body_times_out_with_408(tiny_stack, no_server_errors):
    """A slow-loris client sending half a body and then nothing holds a connection slot until body_timeout_s."""
    app = create_app(tiny_stack, ServeSettings(body_timeout_s=0.2))
    status, headers, body = asgi_post(app, [(b"content-type", b"application/json")], [BODY[:10]], end="stall")
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert headers[b"connection"] == b"close"


def test_the_key_is_compared_on_the_bytes_the_client_sent(tiny_stack):
    """Header values reach the app decoded as latin-1; a non-ASCII key typed in a UTF-8 terminal must still match."""
    app = create_app(tiny_stack, ServeSettings(api_key="clé-secrète"))
    auth = "Bearer clé-secrète".encode()
    ok = asgi_post(app, [(b"authorization", auth), (b"content-type", b"application/json")], [b"{}"])
    assert ok[0] == 400  # past the key check, stopped by the empty body
    wrong = asgi_post(app, [(b"authorization", "Bearer clé-secrete".encode())], [b"{}"])
    assert wrong[0] == 401 and wrong[2]["error"]["code"] == "invalid_api_key"


# ---- content types -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,  # what a browser's fetch() sends for a Blob body: no CORS preflight
        "text/plain",  # a browser's default for a string body: no CORS preflight
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",  # curl -d without -H: also a "simple" cross-site request
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json; charset=latin-1",
        "\u00e9/\u00e9",
    ],
)
def test_a_body_not_declared_as_json_is_415(client, no_server_errors, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    raw = [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]
    status, _, body = asgi_post(client.app, raw, [BODY])
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    assert "application/json" in body["error"]["message"]


@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/JSON; charset=UTF-8", 'application/json;charset="utf-8"']
)
def test_json_content_types_are_accepted(client, content_type):
    resp = client.post(CHAT, content=BODY, headers={"content-type": content_type})
    assert resp.status_code == 200, resp.text


def test_the_official_client_and_the_viewer_send_json(client):
    """The content-type rule costs real clients nothing: httpx's json= (the openai SDK) declares application/json,
    and so does every API call of the viewer page."""
    assert client.post(CHAT, json=GOOD).status_code == 200
    page = client.get("/ui").text
    assert 'const h = { "Content-Type": "application/json" };' in page and "headers: headers()" in page


# ---- sizes: the limit holds however the body arrives ---------------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_413_from_real_uvicorn(tiny_stack, no_server_errors):
    """No Content-Length, Transfer-Encoding: chunked, over a real socket: the count while reading refuses it."""
    app = create_app(tiny_stack, ServeSettings(max_body_bytes=4096))
    with running_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            head = f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
            chunk = b"x" * 1024
            try:
                for _ in range(16):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass  # the server may answer and close before the client is done: that is the point
            reply = read_reply(sock)
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert '"code":"request_too_large"' in reply


def read_reply(sock: socket.socket) -> str:
    """One HTTP response: its head, then as many body bytes as its Content-Length says (or until the server closes)."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"), 0
    )
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def test_100000_nested_brackets_are_a_400(tiny_stack, no_server_errors):
    """The probe's body: 100,000 `[` (and the same depth of objects) within the default 1 MB limit."""
    with TestClient(create_app(tiny_stack, ServeSettings())) as c:
        for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
            error = error_of(c.post(CHAT, content=raw, headers=JSON), 400)
            assert error["code"] == "invalid_json" and "nested" in error["message"]


# ---- JSON values ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_constants_are_refused(client, no_server_errors, constant):
    """json.loads reads NaN and Infinity; JSON has neither, and an ignored extra field must not smuggle them in."""
    raw = b'{"messages": [{"role": "user", "content": "hi"}], "x_extra": ' + constant.encode() + b"}"
    error = error_of(client.post(CHAT, content=raw, headers=JSON), 400)
    assert error["code"] == "invalid_json" and constant.lstrip("-") in error["message"]


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "user": "\\udfff"}', "user"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "x_extra": {"deep": ["\\udc00"]}}', "x_extra.deep[0]"),
        (b'{"messages": [{"role": "user", "content": "hi", "\\ud800": 1}]}', "messages[0]"),
    ],
)
def test_lone_surrogates_are_400_naming_the_field(client, no_server_errors, raw, where):
    """A JSON escape of half a UTF-16 pair decodes to a str that cannot be encoded again (tokenizer, logs, SQLite)."""
    error = error_of(client.post(CHAT, content=raw, headers=JSON), 400)
    assert error["code"] == "invalid_json" and where in error["message"] and "surrogate" in error["message"]


@pytest.mark.parametrize("value", [2.0, 2, 8.0])
def test_integral_numbers_written_with_a_fraction_are_integers(client, value):
    """JSON has one number type and JSON Schema counts 2.0 as an integer: a client that serialises floats works."""
    resp = client.post(CHAT, json={**GOOD, "max_tokens": value, "seed": 7.0, "n": 1.0})
    assert resp.status_code == 200, resp.text
    assert resp.json()["fslm_trace"]["stages"][-1]["tokens_out"] <= int(value)


@pytest.mark.parametrize(
    "raw_value", [b"2.5", b"1e308", b"-1e308", b"1e400", b"10" + b"0" * 99, b"-" + b"9" * 4000, b"true", b'"2"']
)
def test_huge_or_non_integral_max_tokens_is_a_short_400(client, no_server_errors, raw_value):
    raw = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + raw_value + b"}"
    error = error_of(client.post(CHAT, content=raw, headers=JSON), 400)
    assert error["param"] == "max_tokens" and len(error["message"]) < 300  # the number is not echoed in full


def test_long_client_values_are_not_echoed_in_full(client):
    resp = client.post(CHAT, json={**GOOD, "model": "m" * 100_000})
    error = error_of(resp, 404)
    assert error["code"] == "model_not_found" and len(error["message"]) < 300
    error = error_of(client.post(CHAT, json={**GOOD, "stream": "s" * 100_000}), 400)
    assert error["param"] == "stream" and len(error["message"]) < 300


# ---- API key configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["abc\ndef", "abc\x00def", "\x7f"])
def test_a_key_no_header_can_carry_is_a_startup_error(tiny_stack, key):
    with pytest.raises(ConfigError, match="control characters"):
        create_app(tiny_stack, ServeSettings(api_key=key))


def test_fslm_serve_exits_2_with_one_error_line_on_a_key_no_header_can_carry(monkeypatch):
    from typer.testing import CliRunner

    from fslm.cli import app
    from fslm.settings import reset_settings

    monkeypatch.setenv("FSLM_API_KEY", "abc\x01def")
    reset_settings()
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: FSLM_API_KEY holds control characters")


def test_a_whitespace_fslm_api_key_is_a_startup_error(tiny_stack, monkeypatch):
    from fslm.settings import reset_settings

    monkeypatch.setenv("FSLM_API_KEY", " \t ")
    reset_settings()
    with pytest.raises(ConfigError, match="FSLM_API_KEY is set but empty"):
        create_app(tiny_stack, ServeSettings())


def test_a_padded_key_is_trimmed_and_bearer_with_nothing_never_passes(tiny_stack):
    with TestClient(create_app(tiny_stack, ServeSettings(api_key="  k-1  "))) as c:
        assert c.get("/v1/models", headers={"Authorization": "Bearer k-1"}).status_code == 200
        for header in ["Bearer ", "Bearer", "Bearer  ", "Basic k-1", "k-1", "Bearer k-1x", "Bearer k-"]:
            assert c.get("/v1/models", headers={"Authorization": header}).status_code == 401, header


# ---- Host header: the DNS-rebinding guard `fslm serve` puts on a loopback server ------------------------------------


@pytest.fixture()
def served(tiny_stack):
    """The app exactly as serve() / `fslm serve` would run it on the default 127.0.0.1 (without binding a port)."""
    app, options = prepare_serve(tiny_stack, ServeSettings())
    assert options["host"] == "127.0.0.1"
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        yield c


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1"])
def test_a_loopback_server_answers_loopback_names(served, host):
    assert served.get("/v1/models", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "", "localhost.:80"])
def test_a_loopback_server_refuses_other_host_names(served, no_server_errors, host):
    """What a DNS-rebinding page sends: its own name, re-resolved to 127.0.0.1. Refused before any route runs."""
    error = error_of(served.get("/v1/traces", headers={"host": host}), 400)
    assert error["code"] == "invalid_host"
    resp = served.post(CHAT, json=GOOD, headers={"host": host})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_host"
    assert 'fslm_requests_total{route="/v1/chat/completions",status="400"} 1.0' in served.get("/metrics").text


@pytest.mark.parametrize(
    ("host", "env", "explicit", "expected"),
    [
        ("127.0.0.1", None, None, ["localhost", "127.0.0.1", "::1", "127.0.0.1"]),
        ("127.0.0.2", None, None, ["localhost", "127.0.0.1", "::1", "127.0.0.2"]),
        ("0.0.0.0", None, None, ["*"]),  # reached under names fslm cannot know: the API key is the guard there
        ("127.0.0.1", "llm.internal, other.internal", None, ["llm.internal", "other.internal"]),
        ("127.0.0.1", "llm.internal", ["mine.example"], ["mine.example"]),
    ],
)
def test_which_hosts_serve_answers(monkeypatch, host, env, explicit, expected):
    from fslm.settings import reset_settings

    if env is not None:
        monkeypatch.setenv("FSLM_ALLOWED_HOSTS", env)
    reset_settings()
    assert ServeSettings(host=host, allowed_hosts=explicit).resolved_allowed_hosts() == expected


def test_create_app_alone_answers_any_host(client):
    """create_app binds nothing: whoever hosts it decides its names (and TestClient's 'testserver' works)."""
    assert client.get("/health", headers={"host": "anything.example"}).status_code == 200
