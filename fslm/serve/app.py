"""The FastAPI app behind `fslm serve`: OpenAI-compatible chat completions with stage traces, a batch worker, limits.

Routes: POST /v1/chat/completions, GET /v1/models[/{id}], GET /v1/traces[/{id}], GET /metrics (all behind the
optional API key), GET /health and the static viewer page GET /ui (open: the page holds no data and asks for the key).
Every request that reaches the stack is written to the run log (fslm.logs), which /v1/traces pages and searches.

Every input surface answers a client's mistake with a 4xx OpenAI error body, never a 500 or a logged traceback: the
body (declared and counted size, JSON media type, a read deadline, strict JSON in schemas.parse_request), the API key
(checked at startup, compared in constant time) and, under serve(), the Host header (a DNS-rebinding guard on a
loopback bind). The published OpenAPI document describes those answers (see _document); tests/serve fuzzes the app
against it with schemathesis.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fslm.errors import FslmError
from fslm.logs import RunLog, stack_entry, stack_identity
from fslm.serve.batching import BatchQueue, Job, QueueFull
from fslm.serve.chat import messages_to_prompt, trace_record, usage
from fslm.serve.config import ServeSettings
from fslm.serve.metrics import ServeMetrics
from fslm.serve.schemas import (
    DOCUMENTED_MODELS,
    SSE_RESPONSE,
    APIError,
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    TraceList,
    TraceRecord,
    answer_pieces,
    chunk_object,
    completion_object,
    error_body,
    error_responses,
    ok_response,
    parse_request,
    shorten,
    sse,
)
from fslm.serve.traces import TraceStore
from fslm.stack import Stack, StackResult

log = logging.getLogger("fslm.serve")
INLINE_TOKENIZE_CHARS = 8_000
HEALTH_503 = "requests are waiting and the batch worker is not running"
ROUTES = ("/v1/chat/completions", "/v1/models", "/v1/traces", "/metrics", "/health", "/ui")


class ServeState:
    """Everything one app owns: the stack, its batch worker, metrics, recent traces."""

    def __init__(self, stack: Stack, settings: ServeSettings):
        self.stack = stack
        self.settings = settings
        self.model_name = settings.model_name or stack.config.name
        self.max_prompt_tokens = settings.max_prompt_tokens or stack.config.max_prompt_tokens
        self.answer_tokens = stack.config.answer_stage.generation.max_new_tokens
        self.api_key = settings.resolved_api_key()
        self.created = int(time.time())
        self._variants: dict[int, Stack] = {}
        self.queue = BatchQueue(
            self._run_batch,
            max_batch=settings.max_batch,
            wait_s=settings.batch_wait_ms / 1000.0,
            max_wait_s=settings.batch_max_wait_ms / 1000.0,
            maxsize=settings.queue_size,
            on_batch=lambda report: self.metrics.observe_batch(report),
        )
        self.metrics = ServeMetrics(lambda: self.queue.depth, lambda: self.queue.running)
        # A request waits for its log write (so the viewer lists it as soon as it is answered), 1 s at most when
        # another process holds the log's write lock; past that it is answered unlogged.
        self.traces = TraceStore(
            settings.trace_history, RunLog(settings.resolved_log_db(), timeout=1.0) if settings.resolved_log() else None
        )
        self._identity: dict | None = None

    def _run_batch(self, prompts, cap: int | None) -> list[StackResult]:
        return self._stack_for(cap).run_batch(prompts)

    def _stack_for(self, cap: int | None) -> Stack:
        """The stack with its answer stage capped at `cap` new tokens (a request's max_tokens); cached per cap."""
        if cap is None:
            return self.stack
        if cap not in self._variants:
            cfg = self.stack.config.model_copy(deep=True)
            for stage in cfg.final_stages:  # every stage whose text may be the answer
                stage.generation.max_new_tokens = cap
            self._variants[cap] = Stack(cfg, self.stack.engine, engines=self.stack.engines)  # no model loaded again
        return self._variants[cap]

    def answer_cap(self, requested: int | None) -> int | None:
        """Requests asking for at least the stack's own answer length share one batch group (None)."""
        return None if requested is None or requested >= self.answer_tokens else requested

    def submit(self, prompt: str, cap: int | None, on_start=None) -> Job:
        try:
            return self.queue.submit(prompt, cap, on_start)
        except QueueFull as err:
            self.metrics.rejected.labels("queue_full").inc()
            retry = max(1, math.ceil(self.queue.last_batch_seconds or 1.0))
            raise APIError(
                429,
                f"server busy: {err}; retry after {retry} s",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            ) from None

    async def result(self, job: Job, timeout: float, cid: str | None = None) -> StackResult:
        """The job's result, or the APIError its failure means (the failure is written to the run log first)."""
        future = asyncio.wrap_future(job.future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            error = APIError(
                503,
                f"no answer within {timeout:.0f} s; the server is overloaded",
                type="server_error",
                code="timeout",
                headers={"Retry-After": "5"},
            )
        except QueueFull as err:
            error = APIError(503, str(err), type="server_error", code="unavailable", headers={"Retry-After": "5"})
        except FslmError as err:
            error = APIError(400, str(err), code="invalid_input")
        except Exception as err:  # a bug: logged, then the 500 handler answers
            await self.log(cid, job.prompt, time.perf_counter() - job.enqueued, error=f"{type(err).__name__}: {err}")
            raise
        await self.log(cid, job.prompt, time.perf_counter() - job.enqueued, error=f"{error.code}: {error.message}")
        raise error

    async def finish(self, cid: str, result: StackResult, job: Job, t0: float) -> dict:
        latency = time.perf_counter() - t0
        self.metrics.latency.observe(latency)
        record = trace_record(cid, self.model_name, result, job, latency)
        self.traces.add(record)
        await self.log(cid, result.prompt, latency, result=result, record=record)
        return record

    async def log(
        self,
        cid: str | None,
        prompt: str,
        latency: float,
        *,
        result: StackResult | None = None,
        record: dict | None = None,
        error: str | None = None,
    ) -> None:
        """Write one request to the run log, off the event loop (a log write can wait on another process's lock;
        it never fails the request: fslm.logs.record notes a problem once and goes on)."""
        if not self.traces.persistent:
            return
        keys = ("finish_reason", "batch_size", "queue_seconds", "stack_seconds", "latency_seconds")
        details = {"served_as": self.model_name, **{k: record[k] for k in keys if record and k in record}}
        started = time.time() - latency

        def entry() -> dict:
            if self._identity is None:
                self._identity = stack_identity(self.stack)  # hashes the adapter files: once, in a worker thread
            return stack_entry(
                "serve",
                prompt,
                self._identity,
                result=result,
                error=error,
                started=started,
                wall_seconds=latency,
                request_id=cid,
                details=details,
            )

        await run_in_threadpool(self.traces.write, entry, record)


async def _read_body(request: Request, settings: ServeSettings) -> bytes:
    """The body of a JSON request, refused as early as its headers allow: a declared size over the limit (413) or a
    media type other than JSON (415) before a byte is read; then the size is counted while reading (a chunked body
    declares none) and the whole body must arrive within body_timeout_s (408), so a slow client cannot hold a
    connection slot for ever. A client that hangs up mid-body is a 400 for the log, not an unhandled error."""
    limit = settings.max_body_bytes
    _check_declared_length(request.headers.get("content-length"), limit)
    _require_json(request.headers.get("content-type"))
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            return await _read_limited(request, limit)
    except TimeoutError:
        raise APIError(
            408,
            f"the request body did not arrive within {settings.body_timeout_s:g} s",
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        raise APIError(
            400, "the client closed the connection before the body was complete", code="incomplete_body"
        ) from None


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_declared_length(declared: str | None, limit: int) -> None:
    """413 on a Content-Length over the limit, 400 on one that is not a number. Only ASCII digits count ("²".isdigit()
    is true, and int() refuses it), and the length is compared as text first (int() refuses over 4300 digits)."""
    if declared is None:
        return
    if not (declared.isascii() and declared.isdigit()):
        raise APIError(400, f"Content-Length {shorten(declared)} is not a byte count", code="invalid_header")
    digits = declared.lstrip("0") or "0"
    if len(digits) > len(str(limit)) or int(digits) > limit:
        size = digits if len(digits) <= 20 else f"a {len(digits)}-digit number of"
        raise APIError(
            413, f"request body has {size} bytes; this server accepts at most {limit}", code="request_too_large"
        )


def _require_json(content_type: str | None) -> None:
    """415 unless the body is declared as application/json (charset, if given, UTF-8). Besides naming the mistake
    (a form post, text/plain), this is what makes a browser ask first (a CORS preflight, which this server does not
    grant) before another site's page can post here: text/plain, form and no-type bodies are sent without asking."""
    media, params = _media_type(content_type or "")
    if media != "application/json" or params.get("charset", "utf-8") not in ("utf-8", "utf8"):
        got = shorten(content_type) if content_type else "none"
        raise APIError(
            415,
            f"Content-Type must be application/json (UTF-8), got {got}",
            code="unsupported_media_type",
        )


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    """'Application/JSON; charset="UTF-8"' -> ('application/json', {'charset': 'utf-8'})."""
    media, *params = value.split(";")
    pairs = (p.partition("=") for p in params)
    return media.strip().lower(), {k.strip().lower(): v.strip().strip('"').lower() for k, _, v in pairs}


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


REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
}
ERROR_REF = "#/components/schemas/" + ErrorResponse.__name__
BEARER = {"type": "http", "scheme": "bearer", "description": "the server's FSLM_API_KEY"}


def _document(app: FastAPI, max_new_tokens: int, protected: set[str] | None) -> None:
    """Make the published OpenAPI document say what the server really does, so a client generator or a fuzzer can
    trust it: the request body model (read by hand, so FastAPI cannot infer it) with this server's max_tokens limit;
    every error as ErrorResponse in application/json (FastAPI would label /metrics' errors text/plain); no 422
    (validation errors are answered 400); and, when a key is set, bearer auth on the routes that check it."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {})
            _add_models(components.setdefault("schemas", {}), max_new_tokens)
            for path, item in schema["paths"].items():
                for operation in item.values():
                    _fix_responses(operation["responses"])
                    if protected is not None and path in protected:
                        operation["security"] = [{"bearer": []}]
            if protected is not None:
                components["securitySchemes"] = {"bearer": BEARER}
        return app.openapi_schema

    app.openapi = openapi


def _add_models(components: dict[str, Any], max_new_tokens: int) -> None:
    """The models no route declares to FastAPI (the hand-read request body, the streamed chunk) into components."""
    for model in (ChatCompletionRequest, *DOCUMENTED_MODELS):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(definition.pop("$defs", {}))
        components[model.__name__] = definition
    request = components["ChatCompletionRequest"]["properties"]
    for name in ("max_tokens", "max_completion_tokens"):
        request[name]["anyOf"][0]["maximum"] = max_new_tokens
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)


def _fix_responses(responses: dict[str, Any]) -> None:
    responses.pop("422", None)
    for response in responses.values():
        media = response.get("content", {})
        if any(m.get("schema", {}).get("$ref") == ERROR_REF for m in media.values()):
            response["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}


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
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

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
        if req.model is not None and req.model != state.model_name:
            raise APIError(
                404,
                f"model {shorten(req.model)} does not exist; this server serves {state.model_name!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        requested = req.new_token_cap
        if requested is not None and requested > settings.max_new_tokens:
            param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
            raise APIError(
                400,
                f"{param}={shorten(requested)} exceeds this server's limit of {settings.max_new_tokens}",
                param=param,
                code="invalid_value",
            )
        prompt = messages_to_prompt(req.messages)
        # Short prompts tokenize in well under a millisecond: do it inline, so requests of a burst reach the queue
        # close together (a thread-pool hop per request adds scheduling delay on a busy CPU).
        if len(prompt) <= INLINE_TOKENIZE_CHARS:
            n_tokens = stack.engine.count_tokens(prompt)
        else:
            n_tokens = await run_in_threadpool(stack.engine.count_tokens, prompt)
        if n_tokens > state.max_prompt_tokens:
            raise APIError(
                400,
                f"messages: the prompt built from them has {n_tokens} tokens; this server accepts at most {state.max_prompt_tokens}. Shorten it (fslm never truncates silently).",
                param="messages",
                code="context_length_exceeded",
            )
        want_trace = settings.trace if req.fslm_trace is None else req.fslm_trace
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        cap = state.answer_cap(requested)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await _stream(state, cid, prompt, cap, want_trace, include_usage, t0)
        job = state.submit(prompt, cap)
        result = await state.result(job, settings.request_timeout_s, cid)
        record = await state.finish(cid, result, job, t0)
        return JSONResponse(
            completion_object(
                cid,
                state.model_name,
                result.answer,
                record["finish_reason"],
                usage(result),
                record if want_trace else None,
            )
        )

    app.include_router(api)
    protected = {route.path_format for route in api.routes} if state.api_key is not None else None
    _document(app, settings.max_new_tokens, protected)
    return app


async def _stream(
    state: ServeState, cid: str, prompt: str, cap: int | None, want_trace: bool, include_usage: bool, t0: float
) -> StreamingResponse:
    """SSE: a 'queued' chunk at once, a 'running' event when the batch starts, then the answer in word pieces."""
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    job = state.submit(
        prompt, cap, on_start=lambda: loop.call_soon_threadsafe(started.set)
    )  # 429 before the stream opens
    model = state.model_name

    async def events() -> AsyncIterator[str]:
        future = asyncio.wrap_future(job.future)
        try:
            yield sse(
                chunk_object(
                    cid,
                    model,
                    {"role": "assistant", "content": ""},
                    fslm_event={"status": "queued", "queue_depth": state.queue.depth},
                )
            )
            waiter = asyncio.ensure_future(started.wait())
            await asyncio.wait(
                {future, waiter}, timeout=state.settings.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            if started.is_set():
                yield sse(chunk_object(cid, model, {}, fslm_event={"status": "running", "batch_size": job.batch_size}))
            try:
                result = await state.result(job, state.settings.request_timeout_s, cid)
            except APIError as err:
                yield sse(err.body())
                yield sse("[DONE]")
                return
            record = await state.finish(cid, result, job, t0)
            for piece in answer_pieces(result.answer):
                yield sse(chunk_object(cid, model, {"content": piece}))
            yield sse(chunk_object(cid, model, {}, record["finish_reason"], fslm_trace=record if want_trace else None))
            if include_usage:
                final = chunk_object(cid, model, {})
                final["choices"], final["usage"] = [], usage(result)
                yield sse(final)
            yield sse("[DONE]")
        finally:
            if not future.done():
                future.cancel()  # client went away: a request not yet started is dropped from the queue

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


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
