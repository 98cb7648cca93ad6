"""The "openai" engine: a stage (or a whole stack) on any OpenAI-compatible server instead of a local model: vLLM
(with `--lora-modules` for adapters), llama-server, Ollama, a hosted API, or another fslm's `fslm serve`.

How the Engine protocol maps onto HTTP (docs/stacks.md, "Stages on an OpenAI-compatible endpoint"):
- `render_chat` returns the messages themselves, one JSON object per line: readable in a trace, exactly what is sent,
  and decodable, so `generate` recovers the exact messages from the text alone (no state to keep or evict) and sends
  them to /v1/chat/completions, where the SERVER applies its chat template. Any other text is raw text and goes to
  /v1/completions as the prompt.
- an adapter is a model name the server serves: `add_adapter(name, path)` makes calls with that adapter ask for model
  `name` (vLLM: `--lora-modules <stage name>=<adapter folder>`). The folder is the server's business; it is not read.
- `score` needs prompt logprobs: /v1/completions with `echo` and `logprobs` (vLLM has them). A server that refuses
  (fslm serve, llama-server, most hosted chat APIs) makes it an InputError saying so; chat-rendered contexts cannot
  be scored at all (the template is applied out of reach), only raw ones.
- token counts come from each answer's `usage`; `count_tokens` (no tokenizer here) is an estimate, about 4
  characters per token, and `params` is 0 (not known).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import replace

from fslm.engine import EngineStats, Generation, Score
from fslm.engine.http import CHAT, COMPLETIONS, MAX_STOP, OpenAIClient, api_key_from_env, request_options
from fslm.errors import ConfigError, EndpointError, InputError
from fslm.generation import GenerationParams

ROLES = ("system", "developer", "user", "assistant", "tool")
CHARS_PER_TOKEN = 4  # count_tokens' estimate; answers carry the server's own counts in `usage`
BASE_URL_ENV = "OPENAI_BASE_URL"  # where `--engine openai` finds the server when no `endpoint:` block says


def endpoint_ref(model: str, base_url: str) -> str:
    """How an endpoint engine names its model (traces, caches, `fslm stack validate`): served name @ URL."""
    return f"{model}@{base_url.rstrip('/')}"


def render_messages(messages: Sequence[dict[str, str]]) -> str:
    """Chat messages as JSON lines, {"role", "content"} each: `parse_messages` turns the text back into them."""
    lines = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise InputError(f"messages[{i}]: expected a role in {ROLES} and text content, got {message!r:.120}")
        lines.append(json.dumps({"role": role, "content": content}, ensure_ascii=False))
    return "\n".join(lines)


def parse_messages(text: str) -> list[dict[str, str]] | None:
    """The messages `render_messages` made `text` from, or None when it is raw text."""
    if not text.startswith('{"role": '):
        return None
    messages = []
    for line in text.split("\n"):
        try:
            message = json.loads(line)
        except ValueError:
            return None
        if (
            not isinstance(message, dict)
            or list(message) != ["role", "content"]
            or message["role"] not in ROLES
            or not isinstance(message["content"], str)
        ):
            return None
        messages.append(message)
    return messages


class EndpointEngine:
    """The Engine protocol over /v1/chat/completions, /v1/completions and `usage` (module docstring)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        concurrency: int = 4,
        attempts: int = 4,
        max_backoff: float = 4.0,
        context_window: int = 4096,
    ):
        if not isinstance(model, str) or not model.strip():
            raise ConfigError("endpoint model: give the model name the server serves (GET /v1/models lists them)")
        self.client = OpenAIClient(
            base_url,
            api_key=api_key,
            concurrency=concurrency,
            timeout=timeout,
            attempts=attempts,
            max_backoff=max_backoff,
            what="endpoint",
        )
        self.model = model
        self.model_ref = endpoint_ref(model, self.client.base_url)
        self.dtype = "endpoint"  # a remote model's precision is the server's; caches key on this
        self.context_window = context_window  # assumed: the server enforces its own limit and says so in a 400
        self.stats = EngineStats()
        self._adapters: dict[str, str] = {}

    @classmethod
    def from_ref(
        cls,
        model_ref: str,
        *,
        dtype: str | None = None,
        base_url: str | None = None,
        api_key_env: str | None = None,
        **options,
    ) -> EndpointEngine:
        """The registry's factory: `model_ref` is the served model name; the URL is `base_url`, else $OPENAI_BASE_URL;
        the API key is read from the environment variable `api_key_env` names. `dtype` does not apply."""
        url = base_url or os.environ.get(BASE_URL_ENV)
        if not url:
            raise ConfigError(
                f"engine openai: no server URL; give the stack an `endpoint: {{base_url: ...}}` block or set "
                f"{BASE_URL_ENV} (e.g. http://127.0.0.1:8000/v1)"
            )
        return cls(url, model_ref, api_key=api_key_from_env(api_key_env, "api_key_env"), **options)

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def params(self) -> int:
        return 0  # not known: the weights are on the server

    def add_adapter(self, name: str, path: str) -> None:
        """Calls with adapter `name` ask the server for model `name` (vLLM `--lora-modules name=path`); `path` is
        where the server loaded it from, kept only for the record."""
        self._adapters[name] = path

    def adapters(self) -> list[str]:
        return list(self._adapters)

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return render_messages(messages)

    def count_tokens(self, text: str) -> int:
        """An estimate (about 4 characters per token): the server's tokenizer is not here."""
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def _served(self, adapter: str | None) -> str:
        if adapter is None:
            return self.model
        if adapter not in self._adapters:
            raise InputError(f"adapter {adapter!r} was never added to endpoint {self.model_ref}")
        return adapter

    def generate(self, texts: Sequence[str], params: GenerationParams, adapter: str | None = None) -> list[Generation]:
        model = self._served(adapter)
        options = request_options(params)
        requests = []
        for text in texts:
            messages = parse_messages(text)
            if messages is None:
                requests.append((COMPLETIONS, {"model": model, "prompt": text, **options}))
            else:
                requests.append((CHAT, {"model": model, "messages": messages, **options}))
        made = self.client.post_all(requests, lambda data, seconds: _generation(data, seconds, params.stop))
        made = [
            g if g.tokens_in else replace(g, tokens_in=self.count_tokens(t)) for g, t in zip(made, texts, strict=True)
        ]
        self.stats.calls += 1
        self.stats.forward_tokens += sum(g.tokens_in + g.tokens_out for g in made)
        self.stats.generated_tokens += sum(g.tokens_out for g in made)
        self.stats.by_adapter[adapter or "base"] = self.stats.by_adapter.get(adapter or "base", 0) + len(made)
        return made

    def score(self, contexts: Sequence[str], continuations: Sequence[str], adapter: str | None = None) -> list[Score]:
        """Sum of the continuation's token logprobs from the server's echoed prompt logprobs; the tokens counted are
        those that start inside the continuation (a token spanning the boundary belongs to the context)."""
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts for {len(continuations)} continuations")
        if any(parse_messages(c) is not None for c in contexts):
            raise InputError(
                f"endpoint {self.model_ref} cannot score chat-format contexts: the server applies its chat template "
                "out of reach of the scored text; use a raw-format score or verify stage, or a local engine"
            )
        model = self._served(adapter)
        requests = [
            (
                COMPLETIONS,
                {"model": model, "prompt": c + x, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1},
            )
            for c, x in zip(contexts, continuations, strict=True)
        ]
        try:
            answers = self.client.post_all(requests, lambda data, _seconds: data["choices"][0].get("logprobs"))
        except EndpointError as err:
            if err.status not in (400, 422, 501):  # down, wrong model or key: said as it is, not as a missing feature
                raise
            raise self._cannot_score(f"it refused echo + logprobs: {err}") from None
        scores = []
        for context, continuation, logprobs in zip(contexts, continuations, answers, strict=True):
            if not logprobs or "token_logprobs" not in logprobs or "text_offset" not in logprobs:
                raise self._cannot_score("its answer has no prompt logprobs (echo is not supported)")
            scores.append(_score(logprobs, len(context), len(context) + len(continuation), continuation))
        self.stats.calls += 1
        self.stats.forward_tokens += sum(s.n_tokens for s in scores)
        return scores

    def _cannot_score(self, why: str) -> InputError:
        return InputError(
            f"endpoint {self.client.url(COMPLETIONS)} cannot score ({why}); score, verify and vote-over-score stages "
            "need a server that echoes prompt logprobs (vLLM does; fslm serve, llama-server and most hosted chat APIs "
            "do not): run those stages on a local engine"
        )


def _generation(data: dict, seconds: float, stop: Sequence[str]) -> Generation:
    choice = data["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    text = text or ""
    reason = "length" if choice.get("finish_reason") == "length" else "stop"
    if len(stop) > MAX_STOP:  # the API took the first four; the rest are applied here, as a local engine would
        cuts = [text.find(s) for s in stop[MAX_STOP:] if s and s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
    usage = data.get("usage") or {}
    tokens_in = usage.get("prompt_tokens")  # 0 when not reported: generate estimates it from the text
    tokens_out = usage.get("completion_tokens")
    return Generation(
        text=text,
        tokens_in=int(tokens_in) if isinstance(tokens_in, int) else 0,
        tokens_out=int(tokens_out) if isinstance(tokens_out, int) else math.ceil(len(text) / CHARS_PER_TOKEN),
        seconds=round(seconds, 4),
        finish_reason=reason,
    )


def _score(logprobs: dict, start: int, end: int, continuation: str) -> Score:
    total, n, greedy = 0.0, 0, True
    tops = logprobs.get("top_logprobs") or []
    for k, (offset, lp) in enumerate(zip(logprobs["text_offset"], logprobs["token_logprobs"], strict=False)):
        if offset < start or offset >= end or lp is None:
            continue
        total += float(lp)
        n += 1
        top = tops[k] if k < len(tops) else None  # without the top logprobs greediness is unknown: not claimed
        greedy = greedy and bool(top) and max(top.values()) <= float(lp) + 1e-6
    return Score(logprob=total, n_tokens=n, is_greedy=greedy and n > 0, n_chars=len(continuation))
