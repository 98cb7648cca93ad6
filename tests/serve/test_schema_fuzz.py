"""The server against its own OpenAPI schema: schemathesis generates valid and invalid requests for every route.

Every answer must be a documented status with a documented body; none may be a 5xx. Runs in-process over ASGI on the
tiny 3-stage stack, so each generated request that passes validation is a real (cheap) stack run. (schemathesis's
pytest plugin does not load under pytest 9, so each operation's hypothesis strategy is driven directly.)
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from fslm.serve import ServeSettings, create_app

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import (  # noqa: E402  (after the importorskip above)
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Routes with inputs get invalid requests too; the others have nothing to make invalid.
NEGATIVE = {("POST", "/v1/chat/completions"), ("GET", "/v1/traces")}
ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/v1/traces"),
    ("GET", "/v1/traces/{trace_id}"),
    ("GET", "/health"),
    ("GET", "/metrics"),
]


@pytest.fixture(scope="module")
def api_schema(tiny_engine):
    from fslm.config import parse_stack_config
    from fslm.stack import Stack

    from .conftest import TINY_STACK

    stack = Stack(parse_stack_config(TINY_STACK), tiny_engine)
    app = create_app(stack, ServeSettings(max_body_bytes=8192, max_new_tokens=8, queue_size=64))
    with TestClient(app):  # runs the lifespan: the batch worker is up while the fuzzer calls
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_schema_lists_every_route(api_schema):
    listed = {(op.method.upper(), op.path) for op in (r.ok() for r in api_schema.get_all_operations())}
    assert listed == set(ROUTES)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_answers_as_its_schema_says(api_schema, method, path, mode):
    if mode is GenerationMode.NEGATIVE and (method, path) not in NEGATIVE:
        pytest.skip("no parameters or body to make invalid")
    operation = api_schema[path][method]
    seen: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        response = case.call_and_validate(checks=CHECKS)
        seen.append(response.status_code)

    fuzz()
    assert seen, "the fuzzer sent nothing"
    assert all(status < 500 for status in seen)
