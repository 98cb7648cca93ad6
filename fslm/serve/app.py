"""The FastAPI app behind `fslm serve`: OpenAI-compatible chat completions with stage traces, a batch worker, limits.

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models[/{id}], GET /v1/traces[/{id}], GET /metrics (all behind the
optional API key), GET /health and the static viewer page GET /ui (open: the page holds no data and asks for the key).
Every request that reaches the stack is written to the run log (fslm.logs), which /v1/traces pages and searches.

Every input surface answers a client's mistake with a 4xx OpenAI error body, never a 500 or a logged traceback: the
body (declared and counted size, JSON media type, a read deadline, strict JSON in schemas.parse_request), the API key
(checked at startup, compared in constant time) and, under serve(), the Host header (a DNS-rebinding guard on a
loopback bind). The published OpenAPI document (fslm.serve.openapi) describes those answers; tests/serve fuzzes the app
against it with schemathesis.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fslm.serve.body import read_body as _read_body
from fslm.serve.chat import messages_to_prompt
from fslm.serve.completions import check_cap, check_length, check_model, respond, text_completions
from fslm.serve.config import ServeSettings
from fslm.serve.docmodels import (
    SSE_RESPONSE,
    ChatCompletion,
    Health,
    ModelCard,
    ModelList,
    TraceList,
    TraceRecord,
    ok_response,
)
from fslm.serve.metrics import ServeMetrics
from fslm.serve.openapi import COMPLETION_BODY, REQUEST_BODY, SSE_TEXT, TextCompletion, document
from fslm.serve.schemas import APIError, error_body, error_responses, parse_request, shorten
from fslm.serve.shapes import CHAT
from fslm.serve.state import ServeState
from fslm.serve.viewer import viewer_headers
from fslm.stack import Stack

log = logging.getLogger("fslm.serve")
HEALTH_503 = "requests are waiting and the batch worker is not running"
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/traces", "/metrics", "/health", "/ui")


class _HostGuard:
    """Pure ASGI middleware: answers only requests whose Host header names one of `allowed` (port ignored). A server
    on 127.0.0.1 is otherwise reachable from any web page by DNS rebinding (evil.example re-resolved to 127.0.0.1:
    same origin for the browser, so the page could read /v1/traces); the browser still sends Host: evil.example."""

    def __init__(self, app, allowed: list[str]):
        self.app = app
        self.allowed = {name.lower() for name in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "*" in self.allowed:
            return await self.app(scope, receive, send)
        raw = next((v for k, v in scope.get("headers", []) if k == b"host"), b"").decode("latin-1")
        if _host_name(raw) in self.allowed:
            return await self.app(scope, receive, send)
        error = APIError(
            400,
            f"Host {shorten(raw)} is not a name this server answers to ({', '.join(sorted(self.allowed))}); "
            "see allowed_hosts / FSLM_ALLOWED_HOSTS",
            code="invalid_host",
        )
        await JSONResponse(error.body(), status_code=400)(scope, receive, send)


def _host_name(header: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'LocalHost' -> 'localhost'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class _CountRequests:
    """Pure ASGI middleware (does not buffer streams): counts every response by route and status."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500
        path = scope.get("path", "")
        route = next((r for r in ROUTES if path == r or path.startswith(r + "/")), "other")

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()


def _install_error_handlers(app: FastAPI, state: ServeState) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        if err.status == 400:
            state.metrics.rejected.labels("bad_request").inc()
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {err.detail}"
        return JSONResponse(
            error_body(message, "invalid_request_error", None, kind), status_code=err.status_code, headers=err.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _query_error(request: Request, err: RequestValidationError):
        problem = err.errors()[0]
        loc = ".".join(str(p) for p in problem["loc"][1:]) or None
        return JSONResponse(
            error_body(f"{loc}: {problem['msg']}", "invalid_request_error", loc, "invalid_value"), status_code=400
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(
            error_body("internal server error (see the server log)", "server_error", None, "internal_error"),
            status_code=500,
        )


def create_app(stack: Stack | str | Path | None = None, settings: ServeSettings | None = None) -> FastAPI:
    """Python twin of `fslm serve` (without starting uvicorn): an ASGI app around one loaded stack."""
    settings = settings or ServeSettings()
    if not isinstance(stack, Stack):
        stack = Stack.load(stack)
    state = ServeState(stack, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.queue.start()
        yield
        await run_in_threadpool(state.queue.stop)
        state.traces.close()

    app = FastAPI(
        title="fslm",
        description="OpenAI-compatible API over an fslm stack",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.fslm = state
    if settings.allowed_hosts is not None:
        app.add_middleware(_HostGuard, allowed=settings.allowed_hosts)
    app.add_middleware(_CountRequests, metrics=state.metrics)  # added last = outermost: counts refused hosts too
    _install_error_handlers(app, state)

    async def require_key(request: Request) -> None:
        if state.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # Header values arrive decoded as latin-1: back to the bytes the client sent, against the key's UTF-8 bytes.
        sent = token.strip().encode("latin-1")
        if scheme.lower() != "bearer" or not secrets.compare_digest(sent, state.api_key.encode()):
            state.metrics.rejected.labels("unauthorized").inc()
            raise APIError(
                401,
                "missing or invalid API key: send the header 'Authorization: Bearer <key>' (the server's FSLM_API_KEY)",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    api = APIRouter(dependencies=[Depends(require_key)])

    @app.get(
        "/health",
        response_model=None,
        responses={
            **ok_response(Health, "the server and its batch worker"),
            503: {"model": Health, "description": HEALTH_503},
        },
    )
    async def health() -> JSONResponse:
        ok = state.queue.alive or state.queue.depth == 0
        body = {
            "status": "ok" if ok else "worker_down",
            "model": state.model_name,
            "stages": [{"name": s.name, "label": s.display_label} for s in stack.config.stages],
            "queue_depth": state.queue.depth,
            "queue_capacity": state.queue.capacity,
            "max_batch": settings.max_batch,
            "auth": state.api_key is not None,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui")

    @app.get("/ui", include_in_schema=False)
    async def ui() -> HTMLResponse:
        page = resources.files("fslm.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"Cache-Control": "no-cache", **viewer_headers(page)})

    @api.get("/metrics", response_class=PlainTextResponse, responses=error_responses(401))
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    def model_card() -> dict[str, Any]:
        return {
            "id": state.model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "fslm",
            "fslm_stages": stack.stage_names,
            "fslm_base_model": stack.config.base_model,
        }

    @api.get(
        "/v1/models",
        response_model=None,
        responses={**ok_response(ModelList, "the one served model"), **error_responses(401)},
    )
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @api.get(
        "/v1/models/{model_id:path}",
        response_model=None,
        responses={**ok_response(ModelCard, "the served model"), **error_responses(401, 404)},
    )
    async def get_model(model_id: str) -> dict:
        if model_id != state.model_name:
            raise APIError(
                404,
                f"model {shorten(model_id)} does not exist; this server serves {state.model_name!r}",
                param="model",
                code="model_not_found",
            )
        return model_card()

    @api.get(
        "/v1/traces",
        response_model=None,
        responses={**ok_response(TraceList, "recent traces, newest first"), **error_responses(400, 401)},
    )
    async def list_traces(
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=1_000_000_000),
        q: str | None = Query(None, max_length=1000, description="words that must all occur (prompt, answer, stages)"),
    ) -> dict:
        data, more = await run_in_threadpool(state.traces.page, limit, offset, q)
        return {"object": "list", "data": data, "persistent": state.traces.persistent, "has_more": more}

    @api.get(
        "/v1/traces/{trace_id}",
        response_model=None,
        responses={**ok_response(TraceRecord, "one full trace"), **error_responses(401, 404)},
    )
    async def get_trace(trace_id: str) -> dict:
        record = await run_in_threadpool(state.traces.get, trace_id)
        if record is None:
            kept = "in the run log" if state.traces.persistent else f"among the last {settings.trace_history} kept"
            raise APIError(
                404,
                f"no trace {shorten(trace_id)} {kept}",
                param="trace_id",
                code="not_found",
            )
        return record

    @api.post(
        "/v1/chat/completions",
        # The body is read by hand (size limit first, then strict JSON), so FastAPI cannot infer it: declared here.
        openapi_extra={"requestBody": REQUEST_BODY},
        responses={
            **ok_response(ChatCompletion, "the completion (or, with stream: true, server-sent events)", **SSE_RESPONSE),
            **error_responses(400, 401, 404, 408, 413, 415, 429, 503),
        },
    )
    async def chat_completions(request: Request) -> Response:
        t0 = time.perf_counter()
        req = parse_request(await _read_body(request, settings))
        check_model(state, req.model)
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        check_cap(state, req.new_token_cap, param)
        prompt = messages_to_prompt(req.messages)
        await check_length(state, prompt, "messages")
        return await respond(state, CHAT, req, [prompt], req.new_token_cap, t0)

    @api.post(
        "/v1/completions",
        openapi_extra={"requestBody": COMPLETION_BODY},
        responses={
            **ok_response(TextCompletion, "the completion (or, with stream: true, server-sent events)", **SSE_TEXT),
            **error_responses(400, 401, 404, 408, 413, 415, 429, 503),
        },
    )
    async def completions(request: Request) -> Response:
        return await text_completions(state, await _read_body(request, settings))

    app.include_router(api)
    protected = {route.path_format for route in api.routes} if state.api_key is not None else None
    document(app, settings.max_new_tokens, protected)
    return app


def serve(
    stack: Stack | str | Path | None = None, settings: ServeSettings | None = None, *, log_level: str = "info"
) -> None:
    """Python twin of `fslm serve`: load the stack, then run uvicorn until interrupted."""
    import uvicorn

    app, options = prepare_serve(stack, settings)
    uvicorn.run(app, log_level=log_level, **options)


def prepare_serve(
    stack: Stack | str | Path | None = None, settings: ServeSettings | None = None
) -> tuple[FastAPI, dict[str, Any]]:
    """What serve() runs, short of binding: the app with serve's own defaults (the Host guard for the address it
    binds) and uvicorn's options."""
    settings = settings or ServeSettings()
    settings = settings.model_copy(update={"allowed_hosts": settings.resolved_allowed_hosts()})
    app = create_app(stack, settings)
    # A backstop on open connections (uvicorn answers 503 beyond it); the bounded queue answers 429 well before.
    limit = (settings.queue_size + settings.max_batch) * 2 + 100
    options = {
        "host": settings.host,
        "port": settings.port,
        "limit_concurrency": limit,
        "timeout_graceful_shutdown": 5,
    }
    return app, options
