"""The server against its own OpenAPI schema: schemathesis generates valid and invalid requests for every route.

Every answer must be a documented status with a documented body and media type; none may be a 5xx. Runs in-process
over ASGI on the tiny 3-stage stack, so each generated request that passes validation is a real (cheap) stack run.
(schemathesis's pytest plugin does not load under pytest 9, so each operation's hypothesis strategy is driven
directly.) Three passes: raw valid/invalid cases per route; valid cases repaired into answerable ones (the schema
cannot say "the last message is a non-empty user message"), which must all be answered 200; and a server with an API
key, where schemathesis also probes every protected route without the key and with a wrong one (ignored_auth).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fslm.config import parse_stack_config
from fslm.serve import ServeSettings, create_app
from fslm.stack import Stack

from .conftest import TINY_STACK

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import (  # noqa: E402  (after the importorskip above)
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

KEY = "fuzz-key-0123456789"
MAX_NEW_TOKENS = 8
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CHAT = ("POST", "/v1/chat/completions")
TEXT = ("POST", "/v1/completions")
# Routes with inputs get invalid requests too; the others have nothing to make invalid.
NEGATIVE = {CHAT, TEXT, ("GET", "/v1/traces")}
ROUTES = [
    CHAT,
    TEXT,
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/v1/traces"),
    ("GET", "/v1/traces/{trace_id}"),
    ("GET", "/health"),
    ("GET", "/metrics"),
]


def _serve(engine, **options):
    """A running app on the tiny stack (lifespan entered, so the batch worker is up) and its loaded schema."""
    app = create_app(
        Stack(parse_stack_config(TINY_STACK), engine),
        ServeSettings(
            max_body_bytes=8192, max_new_tokens=MAX_NEW_TOKENS, batch_wait_ms=1, batch_max_wait_ms=1, **options
        ),
    )
    return app, TestClient(app)


# Explicit config, so a schemathesis.toml lying around cannot change what these tests do. Every refusal of a bad
# request counts as a rejection (413/415 too), and a request the schema calls valid and the test made answerable
# must be a 200, not merely "not a 5xx".
CHECK_CONFIG = {
    "negative_data_rejection": {"expected-statuses": [400, 401, 404, 413, 415]},
    "positive_data_acceptance": {"expected-statuses": [200]},
}


@pytest.fixture(scope="module")
def api_schema(tiny_engine):
    app, client = _serve(tiny_engine)
    with client:
        config = SchemathesisConfig.from_dict({"checks": CHECK_CONFIG})
        yield schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


@pytest.fixture(scope="module")
def keyed_schema(tiny_engine):
    app, client = _serve(tiny_engine, api_key=KEY)
    config = SchemathesisConfig.from_dict({"checks": CHECK_CONFIG, "auth": {"openapi": {"bearer": {"bearer": KEY}}}})
    with client:
        yield schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


def run(operation, strategy, checks, examples: int = 30) -> list[tuple[int, str]]:
    """Send every case the strategy draws (at most `examples`), run the checks on each answer; (status, media type)
    of every answer."""
    seen: list[tuple[int, str]] = []

    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        response = case.call_and_validate(checks=checks)
        media = (response.headers.get("content-type") or [""])[0].split(";")[0]
        seen.append((response.status_code, media))

    fuzz()
    assert seen, f"the fuzzer sent nothing to {operation.label}"
    return seen


def test_the_schema_lists_every_route(api_schema):
    listed = {(op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations())}
    assert listed == set(ROUTES)


def test_the_schema_documents_every_error_as_an_openai_error_body(api_schema):
    raw = api_schema.raw_schema
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, item in raw["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method} {path}: validation errors are answered 400, not 422"
            for status, response in responses.items():
                if int(status) >= 400 and path != "/health":
                    assert response["content"] == error, f"{method} {path} {status}"
    chat = raw["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "404", "408", "413", "415", "429", "503"} <= set(chat)
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    request = raw["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert request["max_tokens"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": MAX_NEW_TOKENS}
    assert "securitySchemes" not in raw.get("components", {})  # this server has no key: nothing to send


def test_a_keyed_server_declares_bearer_auth_on_exactly_the_routes_that_check_it(keyed_schema):
    raw = keyed_schema.raw_schema
    assert raw["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    secured = {(m.upper(), p) for p, item in raw["paths"].items() for m, op in item.items() if "security" in op}
    assert secured == set(ROUTES) - {("GET", "/health")}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_answers_as_its_schema_says(api_schema, method, path, mode):
    if mode is GenerationMode.NEGATIVE and (method, path) not in NEGATIVE:
        pytest.skip("no parameters or body to make invalid")
    operation = api_schema[path][method]
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    seen = run(operation, operation.as_strategy(generation_mode=mode), checks)
    assert all(status < 500 for status, _ in seen)


@st.composite
def answerable(draw, operation, stream: bool | None = None):
    """A valid generated body, repaired where the schema cannot speak: the last message is a user question with
    text, earlier messages are plain text, `model` (any string is valid JSON Schema) is the served one, and
    top_logprobs comes with logprobs: true. Texts are
    cut to TEXT_BYTES so the prompt stays under the tiny stack's 128 tokens (at most one token per byte)."""
    case = draw(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    body = case.body
    history = [{**m, "content": _plain(m.get("content"))} for m in body["messages"][-3:-1]]
    question = draw(st.text(st.characters(codec="utf-8"), min_size=1).map(_clip).filter(str.strip))
    body["messages"] = [*history, {"role": "user", "content": question}]
    body["model"] = "tiny"
    body.pop("tools", None)
    if body.get("top_logprobs") is not None:  # top_logprobs needs logprobs: true (the schema cannot say so)
        body["logprobs"] = True
    if stream is not None:
        body["stream"] = stream
    return case


@st.composite
def answerable_text(draw, operation, stream: bool | None = None):
    """answerable() for /v1/completions: one clipped prompt (a list of one, sometimes), the served model."""
    case = draw(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    question = draw(st.text(st.characters(codec="utf-8"), min_size=1).map(_clip).filter(str.strip))
    case.body["prompt"] = draw(st.sampled_from([question, [question]]))
    case.body["model"] = "tiny"
    if stream is not None:
        case.body["stream"] = stream
    return case


TEXT_BYTES = 24


def _clip(text: str) -> str:
    return text.encode()[:TEXT_BYTES].decode(errors="ignore")


def _plain(content) -> str | None:
    """A message's content as the clipped text of its text parts (other parts would be refused: 400)."""
    if isinstance(content, list):
        content = "\n".join(p["text"] for p in content if p.get("type") == "text" and isinstance(p.get("text"), str))
    return _clip(content) if isinstance(content, str) else None


@pytest.mark.parametrize(("stream", "media"), [(False, "application/json"), (True, "text/event-stream")])
def test_answerable_requests_are_answered_as_documented(api_schema, stream, media):
    """The success path, non-streaming and streaming, against ChatCompletion and the documented server-sent events
    (each `data` a ChatCompletionChunk, then [DONE]): every repaired request must be a 200 (positive_data_acceptance)
    whose body matches the schema."""
    checks = [*CHECKS, positive_data_acceptance]
    operation = api_schema["/v1/chat/completions"]["POST"]
    assert set(run(operation, answerable(operation, stream), checks, examples=15)) == {(200, media)}
    operation = api_schema["/v1/completions"]["POST"]
    assert set(run(operation, answerable_text(operation, stream), checks, examples=8)) == {(200, media)}


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_keyed_server_enforces_its_key_as_declared(keyed_schema, method, path):
    """With the key configured, schemathesis sends it, and for each successful answer re-sends the request without
    it and with a wrong one: both must be refused (ignored_auth). /health is open and declares no security. Requests
    are steered to succeed (the served model id, an existing trace id, answerable chats): only a success is probed,
    and only a success shows its body against the schema."""
    operation = keyed_schema[path][method]
    if (method, path) == CHAT:
        strategy = answerable(operation)
    elif (method, path) == TEXT:
        strategy = answerable_text(operation)
    else:
        known = {"model_id": "tiny", "trace_id": _a_trace_id(keyed_schema.app)}
        strategy = operation.as_strategy(path_parameters={k: v for k, v in known.items() if f"{{{k}}}" in path})
    statuses = {status for status, _ in run(operation, strategy, [*CHECKS, ignored_auth], examples=10)}
    assert statuses == {200}


def _a_trace_id(app) -> str:
    """The id of a real trace (one chat answered by the running app), so GET /v1/traces/{id} has something to find."""
    resp = TestClient(app).post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Which planet is largest?"}]},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]
