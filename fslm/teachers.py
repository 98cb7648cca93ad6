"""Teachers write the stage texts that students are distilled from, behind one small protocol.

Two backends: a local model (anything `load_engine` resolves, run batched) and any OpenAI-compatible chat-completions
endpoint (vLLM, Ollama, a hosted API) through fslm.engine.http, the client the endpoint engine uses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fslm.cpu import apply_threads
from fslm.engine import Engine, GenerationParams, http, load_engine
from fslm.engine.http import CHAT, OpenAIClient, api_key_from_env, request_options
from fslm.errors import ConfigError, EndpointError

Messages = Sequence[dict[str, str]]


class TeacherError(EndpointError):
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


class HTTPTeacher:
    """OpenAI-compatible `/chat/completions` with at most `concurrency` requests in flight (fslm.engine.http)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = http.CONCURRENCY,
        timeout: float = http.TIMEOUT,
        attempts: int = http.ATTEMPTS,
        max_backoff: float = http.MAX_BACKOFF,
    ):
        self.client = OpenAIClient(
            base_url,
            api_key=api_key,
            concurrency=concurrency,
            timeout=timeout,
            attempts=attempts,
            max_backoff=max_backoff,
            what="teacher",
            error=TeacherError,
            hint="finished records are saved, rerun the same command to resume",
        )
        self.url = self.client.url(CHAT)
        self.model = model
        self.id = f"http:{model}@{self.client.base_url}"

    @property
    def retries(self) -> int:
        """Transient failures survived, for reports and tests."""
        return self.client.retries

    def _body(self, messages: Messages, params: GenerationParams) -> dict:
        return {"model": self.model, "messages": list(messages), **request_options(params)}

    def generate(self, requests: Sequence[Messages], params: GenerationParams) -> list[TeacherReply]:
        return self.client.post_all([(CHAT, self._body(m, params)) for m in requests], _reply)

    def close(self) -> None:
        pass


def _reply(data: dict, seconds: float) -> TeacherReply:
    choice = data["choices"][0]
    text = choice["message"]["content"] or ""
    reason = "length" if choice.get("finish_reason") == "length" else "stop"
    usage = data.get("usage") or {}
    return TeacherReply(text.strip(), seconds, reason, usage.get("completion_tokens"))


def make_teacher(
    ref: str | None = None,
    *,
    url: str | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    default_ref: str = "smollm2-135m",
    dtype: str = "float32",
    engine: Engine | None = None,
    backend: str = "hf",
) -> Teacher:
    """A teacher from command-line style options: an HTTP endpoint when `url` is given, else a local model.
    `concurrency` and `timeout` left None are HTTPTeacher's own defaults."""
    if url:
        if ref:
            raise ConfigError("give either --teacher (a local model) or --teacher-url, not both")
        if not model:
            raise ConfigError("--teacher-url needs --teacher-model (the model name the endpoint serves)")
        given = {"concurrency": concurrency, "timeout": timeout}
        options = {name: value for name, value in given.items() if value is not None}
        return HTTPTeacher(url, model, api_key=api_key_from_env(api_key_env), **options)
    if engine is not None and (ref is None or ref == engine.model_ref):
        return LocalTeacher(engine)
    return LocalTeacher.load(ref or default_ref, dtype=dtype, backend=backend)
