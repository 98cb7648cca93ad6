"""The inference boundary: everything above it (stacks, eval, cascades, serving) speaks only this protocol.

An engine holds ONE copy of a base model plus any number of named LoRA adapters, and can
- render chat messages to the exact text the model sees,
- generate continuations for a batch of texts under one adapter (or none),
- score continuations (sum of log-probabilities) under one adapter (or none).

Backends: `hf.py` (transformers + PEFT, the reference) and `llamacpp.py` (llama.cpp on GGUF weights); both implement
the same protocol, so nothing above this package changes with the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    no_repeat_ngram_size: int = 0  # 0 = off; counts generated tokens only


@dataclass(frozen=True)
class Generation:
    text: str
    tokens_in: int
    tokens_out: int
    seconds: float
    finish_reason: str  # "stop" (eos or stop string) or "length"


@dataclass(frozen=True)
class Score:
    logprob: float  # sum of log-probabilities of the continuation tokens
    n_tokens: int
    is_greedy: bool  # every continuation token was the argmax
    n_chars: int = 0  # length of the continuation text, for lm-eval's acc_norm


@dataclass
class EngineStats:
    """Counters for cost accounting; engines add to them on every call."""

    forward_tokens: int = 0
    generated_tokens: int = 0
    calls: int = 0
    by_adapter: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    model_ref: str
    context_window: int
    stats: EngineStats

    @property
    def params(self) -> int: ...

    def add_adapter(self, name: str, path: str) -> None: ...

    def adapters(self) -> list[str]: ...

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(
        self, texts: Sequence[str], params: GenerationParams, adapter: str | None = None
    ) -> list[Generation]: ...

    def score(
        self, contexts: Sequence[str], continuations: Sequence[str], adapter: str | None = None
    ) -> list[Score]: ...


BACKENDS = ("hf", "llamacpp", "auto")
BACKEND_HELP = "hf (transformers + PEFT, the reference), llamacpp (llama.cpp on GGUF, needs fslm[fast]) or auto"


def check_backend(backend: str) -> str:
    """The backend name if `load_engine` knows it; FslmError (naming the choices) otherwise. Needs no import."""
    from fslm.errors import InputError

    if backend not in BACKENDS:
        raise InputError(f"unknown engine {backend!r}; choose {', '.join(BACKENDS)}")
    return backend


_HF_OPTIONS = ("batch_size", "score_batch_tokens", "score_logits_bytes")


def load_engine(model_ref: str, *, dtype: str = "float32", backend: str = "hf", **kwargs) -> Engine:
    """Build an engine for a model reference; the only place that picks a backend.

    "hf": transformers + PEFT, the reference. "llamacpp": llama.cpp on GGUF weights (`fslm[fast]`, docs/engine.md).
    "auto": llama.cpp where it can run this model, else HF, said once on stderr."""
    from fslm.errors import FslmError

    check_backend(backend)
    if backend in ("llamacpp", "auto"):
        from fslm.engine.llamacpp import LlamaCppEngine

        try:
            return LlamaCppEngine.from_ref(model_ref, dtype=dtype, **kwargs)
        except FslmError as err:  # runtime not installed, a hub reference, an architecture it cannot convert
            if backend == "llamacpp":
                raise
            _note_once(f"note: {err}; using the HF engine")
            kwargs = {k: v for k, v in kwargs.items() if k in _HF_OPTIONS}  # drop llama.cpp-only options
    from fslm.engine.hf import HFEngine

    return HFEngine.from_ref(model_ref, dtype=dtype, **kwargs)


_NOTED: set[str] = set()


def _note_once(message: str) -> None:
    import sys

    if message not in _NOTED:
        _NOTED.add(message)
        print(message, file=sys.stderr)


__all__ = [
    "BACKENDS",
    "BACKEND_HELP",
    "Engine",
    "EngineStats",
    "Generation",
    "GenerationParams",
    "Score",
    "check_backend",
    "load_engine",
]
