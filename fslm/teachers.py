"""Teachers write the stage texts that students are distilled from, behind one small protocol.

Two backends: a local model (anything `load_engine` resolves, run batched) and any OpenAI-compatible chat-completions
endpoint (vLLM, Ollama, a hosted API) reached with httpx under bounded concurrency, timeouts and tenacity retries.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from fslm.cpu import apply_threads
from fslm.engine import Engine, GenerationParams, load_engine
from fslm.errors import ConfigError, FslmError

Messages = Sequence[dict[str, str]]
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class TeacherError(FslmError):
    """The teacher could not answer (endpoint down, bad key, retries exhausted). Finished records are kept."""


@dataclass(frozen=True)
class TeacherReply:
    text: str
    seconds: float
    finish_reason: str  # "stop" or "length" (hit max_new_tokens)
    tokens_out: int | None = None


class Teacher(Protocol):
    id: str  # recorded with every distilled record

    def generate(self, requests: Sequence[Messages], params: GenerationParams) -> list[TeacherReply]: ...

    def close(self) -> None: ...


class LocalTeacher:
    """A local model through the engine; the engine batches (and length-sorts) the requests itself."""

    def __init__(self, engine: Engine):
        self.engine = engine
        kind = getattr(engine, "dtype", "")  # a non-reference engine's texts are its own: say which made them
        self.id = f"local:{engine.model_ref}" + (f"@{kind}" if str(kind).startswith("llamacpp") else "")
        self._busy = False

    @classmethod
    def load(cls, ref: str, *, dtype: str = "float32", backend: str = "hf") -> LocalTeacher:
        return cls(load_engine(ref, dtype=dtype, backend=backend))

    def generate(self, requests: Sequence[Messages], params: GenerationParams) -> list[TeacherReply]:
        apply_threads(busy=self._busy)  # re-checked per batch: other processes come and go
        self._busy = True
        texts = [self.engine.render_chat(list(m)) for m in requests]
        gens = self.engine.generate(texts, params)
        return [TeacherReply(g.text, g.seconds, g.finish_reason, g.tokens_out) for g in gens]

    def close(self) -> None:
        pass


class _Retryable(Exception):
    """A transient answer from the server (5xx, 429, garbled body): try again after a backoff."""


def _retryable(err: BaseException) -> bool:
    return isinstance(err, (_Retryable, httpx.TransportError))


class HTTPTeacher:
    """OpenAI-compatible `/chat/completions` with at most `concurrency` requests in flight."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 4,
        timeout: float = 60.0,
        attempts: int = 6,
        max_backoff: float = 8.0,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"teacher URL {base_url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)"
            )
        if concurrency < 1 or attempts < 1:
            raise ConfigError("teacher concurrency and attempts must be >= 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = httpx.Timeout(timeout, connect=min(10.0, timeout))
        self.attempts = attempts
        self.max_backoff = max_backoff
        self.id = f"http:{model}@{base_url.rstrip('/')}"
        self.retries = 0  # transient failures survived, for reports and tests

    def _body(self, messages: Messages, params: GenerationParams) -> dict:
        body: dict = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
        }
        if params.temperature > 0 and params.top_p < 1.0:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)[:4]  # the OpenAI API accepts at most 4
        if params.seed is not None:
            body["seed"] = params.seed
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty  # vLLM/Ollama extension; omitted when unused
        return body

    async def _one(
        self, client: httpx.AsyncClient, gate: asyncio.Semaphore, messages: Messages, params: GenerationParams
    ) -> TeacherReply:
        body = self._body(messages, params)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.2, max=self.max_backoff) + wait_random(0, min(0.2, self.max_backoff)),
            retry=retry_if_exception(_retryable),
            before_sleep=lambda _state: self._count_retry(),
            reraise=True,
        )
        async with gate:
            async for attempt in retrying:
                with attempt:
                    t0 = time.perf_counter()
                    response = await client.post(self.url, json=body)
                    return self._parse(response, time.perf_counter() - t0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _count_retry(self) -> None:
        self.retries += 1

    def _parse(self, response: httpx.Response, seconds: float) -> TeacherReply:
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            raise TeacherError(
                f"teacher {self.url} answered HTTP {response.status_code}: {response.text[:300]} "
                "(check the URL, the model name and the API key variable)"
            )
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise _Retryable(f"malformed chat-completions body ({type(err).__name__}): {response.text[:200]}") from None
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        usage = data.get("usage") or {}
        return TeacherReply(text.strip(), seconds, reason, usage.get("completion_tokens"))

    async def _all(self, requests: Sequence[Messages], params: GenerationParams) -> list[TeacherReply]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        gate = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, headers=headers, limits=limits) as client:
            return await asyncio.gather(*(self._one(client, gate, m, params) for m in requests))

    def generate(self, requests: Sequence[Messages], params: GenerationParams) -> list[TeacherReply]:
        try:
            return asyncio.run(self._all(requests, params))
        except (_Retryable, httpx.TransportError) as err:
            raise TeacherError(
                f"teacher {self.url} still failing after {self.attempts} attempts ({type(err).__name__}: {err}); "
                "finished records are saved, rerun the same command to resume"
            ) from None

    def close(self) -> None:
        pass


def api_key_from_env(var: str | None) -> str | None:
    """The API key lives in an env var the USER names (never on the command line, never in a file)."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"--api-key-env {var}: the environment variable {var} is not set or empty")
    return value


def make_teacher(
    ref: str | None = None,
    *,
    url: str | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    concurrency: int = 4,
    timeout: float = 60.0,
    default_ref: str = "smollm2-135m",
    dtype: str = "float32",
    engine: Engine | None = None,
    backend: str = "hf",
) -> Teacher:
    """A teacher from command-line style options: an HTTP endpoint when `url` is given, else a local model."""
    if url:
        if ref:
            raise ConfigError("give either --teacher (a local model) or --teacher-url, not both")
        if not model:
            raise ConfigError("--teacher-url needs --teacher-model (the model name the endpoint serves)")
        return HTTPTeacher(url, model, api_key=api_key_from_env(api_key_env), concurrency=concurrency, timeout=timeout)
    if engine is not None and (ref is None or ref == engine.model_ref):
        return LocalTeacher(engine)
    return LocalTeacher.load(ref or default_ref, dtype=dtype, backend=backend)
