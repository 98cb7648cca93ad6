"""The one OpenAI-compatible HTTP client fslm has: the HTTP teacher (fslm.teachers) and the endpoint engine
(fslm.engine.endpoint) both send their requests through it.

httpx with at most `concurrency` requests in flight, a timeout per request (a stalled server is a timeout, not a hang),
and tenacity retries with exponential backoff and jitter on transient answers: 408/409/425/429/5xx, dropped
connections, timeouts and garbled bodies. Anything else (a 4xx the server will repeat) fails at once. Every failure
is one `EndpointError` (or the subclass the caller names) whose message names the URL.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from fslm.errors import ConfigError, EndpointError
from fslm.generation import GenerationParams

T = TypeVar("T")
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
CHAT = "/chat/completions"
COMPLETIONS = "/completions"
MAX_STOP = 4  # the OpenAI API accepts at most 4 stop strings


def request_options(params: GenerationParams) -> dict:
    """The decoding fields of a (chat) completions body for `params`; extensions only where they are in use."""
    body: dict = {"max_tokens": params.max_new_tokens, "temperature": params.temperature}
    if params.temperature > 0 and params.top_p < 1.0:
        body["top_p"] = params.top_p
    if params.stop:
        body["stop"] = list(params.stop)[:MAX_STOP]
    if params.seed is not None:
        body["seed"] = params.seed
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty  # vLLM/Ollama extension; omitted when unused
    return body


class Retryable(Exception):
    """A transient answer (5xx, 429, a body that is not what the API promises): try again after a backoff."""


def _retryable(err: BaseException) -> bool:
    return isinstance(err, (Retryable, httpx.TransportError))


def check_base_url(base_url: object, what: str = "endpoint") -> str:
    """`base_url` without a trailing slash if it is an http(s) URL with a host; ConfigError otherwise."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"{what} URL {base_url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)"
        )
    try:
        host = httpx.URL(base_url).host
    except (httpx.InvalidURL, ValueError) as err:
        raise ConfigError(f"{what} URL {base_url!r} is not a valid URL: {err}") from None
    if not host:
        raise ConfigError(f"{what} URL {base_url!r} has no host (e.g. http://127.0.0.1:8000/v1)")
    return base_url.rstrip("/")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to the end from synchronous code, also when this thread already runs an event loop (then on a
    short-lived thread of its own, since a loop cannot be re-entered)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="fslm-http", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# The client's defaults, shared by the callers that expose them (the HTTP teacher): concurrent requests, seconds per
# request, attempts per request (retried on 429/5xx/timeouts/garbled bodies), longest backoff between attempts.
CONCURRENCY, TIMEOUT, ATTEMPTS, MAX_BACKOFF = 4, 60.0, 6, 8.0


class OpenAIClient:
    """POSTs JSON bodies to paths under `base_url` (e.g. "/chat/completions") and parses each answer with the caller's
    `parse(data, seconds)`; a parse that raises KeyError, IndexError, TypeError or ValueError is a garbled body and
    retried like a 5xx."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        concurrency: int = CONCURRENCY,
        timeout: float = TIMEOUT,
        attempts: int = ATTEMPTS,
        max_backoff: float = MAX_BACKOFF,
        what: str = "endpoint",
        error: type[EndpointError] = EndpointError,
        hint: str = "",
    ):
        self.base_url = check_base_url(base_url, what)
        if concurrency < 1 or attempts < 1:
            raise ConfigError(f"{what} concurrency and attempts must be >= 1")
        if not timeout > 0:
            raise ConfigError(f"{what} timeout must be > 0 seconds")
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout_seconds = float(timeout)
        self.timeout = httpx.Timeout(timeout, connect=min(10.0, timeout))
        self.attempts = attempts
        self.max_backoff = max_backoff
        self.what = what
        self.error = error
        self.hint = hint  # appended to the retries-exhausted message (e.g. how to resume)
        self.retries = 0  # transient failures survived, for reports and tests

    def url(self, path: str) -> str:
        return self.base_url + path

    def post_all(self, requests: Sequence[tuple[str, dict]], parse: Callable[[dict, float], T]) -> list[T]:
        """Each (path, body) answered and parsed, in order; one error for the first request that cannot be."""
        if not requests:
            return []
        try:
            return run_sync(lambda: self._all(requests, parse))
        except (Retryable, httpx.TransportError) as err:
            url = self.url(getattr(err, "path", "") or requests[0][0])
            if isinstance(err, httpx.TimeoutException):
                why = f"no answer within the {self.timeout_seconds:g} s timeout ({type(err).__name__})"
            else:
                why = f"{type(err).__name__}: {err}"
            raise self.error(
                f"{self.what} {url} still failing after {self.attempts} attempts ({why})"
                + (f"; {self.hint}" if self.hint else "")
            ) from None

    async def _all(self, requests: Sequence[tuple[str, dict]], parse: Callable[[dict, float], T]) -> list[T]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        gate = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, headers=headers, limits=limits) as client:
            return await asyncio.gather(*(self._one(client, gate, path, body, parse) for path, body in requests))

    async def _one(
        self,
        client: httpx.AsyncClient,
        gate: asyncio.Semaphore,
        path: str,
        body: dict,
        parse: Callable[[dict, float], T],
    ) -> T:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.2, max=self.max_backoff) + wait_random(0, min(0.2, self.max_backoff)),
            retry=retry_if_exception(_retryable),
            before_sleep=lambda _state: self._count_retry(),
            reraise=True,
        )
        async with gate:
            try:
                async for attempt in retrying:
                    with attempt:
                        t0 = time.perf_counter()
                        response = await client.post(self.url(path), json=body)
                        return self._parse(path, response, time.perf_counter() - t0, parse)
            except (Retryable, httpx.TransportError) as err:
                err.path = path  # type: ignore[attr-defined]  # which URL kept failing, for the message
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _count_retry(self) -> None:
        self.retries += 1

    def _parse(self, path: str, response: httpx.Response, seconds: float, parse: Callable[[dict, float], T]) -> T:
        if response.status_code in RETRY_STATUS:
            raise Retryable(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            raise self.error(
                f"{self.what} {self.url(path)} answered HTTP {response.status_code}: {response.text[:300]} "
                "(check the URL, the model name and the API key variable)",
                status=response.status_code,
            )
        try:
            return parse(response.json(), seconds)
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise Retryable(f"malformed answer ({type(err).__name__}): {response.text[:200]}") from None


def api_key_from_env(var: str | None, what: str = "--api-key-env") -> str | None:
    """The API key lives in an env var the USER names (never on the command line, never in a file)."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"{what} {var}: the environment variable {var} is not set or empty")
    return value
