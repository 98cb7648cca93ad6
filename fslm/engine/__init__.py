"""The inference boundary: everything above it (stacks, eval, cascades, serving) speaks only this protocol.

An engine holds ONE copy of a base model plus any number of named LoRA adapters, and can
- render chat messages to the exact text the model sees,
- generate continuations for a batch of texts under one adapter (or none),
- score continuations (sum of log-probabilities) under one adapter (or none),
- optionally (`StreamingEngine`, both backends) generate while reporting each row's text token by token,
- optionally (`MixedBatchEngine`: hf, vllm) generate rows of different stages (adapters, settings) in one batch.

Backends: `hf.py` (transformers + PEFT, the reference) and `llamacpp/` (llama.cpp on GGUF weights); both implement
the same protocol, so nothing above this package changes with the backend. `endpoint.py` ("openai") implements it
over an OpenAI-compatible HTTP server (vLLM, llama-server, Ollama, a hosted API, `fslm serve`); `vllm.py` runs vLLM's
offline `LLM` in this process, one base model with every adapter as a LoRARequest. `registry.py` finds them, and engines
that other packages add, by name (docs/engine.md, "Writing an engine plugin").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from fslm.engine.registry import AUTO, engine_factory, engine_names, register_engine
from fslm.generation import GenerationParams


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
    prefix_hits: int = 0  # generate batches that started from a stored prefix state (fslm.engine.prefix)
    prefix_tokens_reused: int = 0  # prompt tokens those batches did not recompute, summed over rows


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


@runtime_checkable
class StreamingEngine(Engine, Protocol):
    """An Engine that reports text as it is generated: both backends (hf, llamacpp) implement it on their own token
    loop. `on_text(row, piece)` is called on the decoding thread each time row `row` of `texts` has a new certain
    piece; a row's pieces join to exactly its `Generation.text`, and the Generations are those `generate` returns.
    A separate protocol (not a method of Engine) so that wrappers and test engines that only generate stay Engines;
    `generate_streaming` falls back to one piece per row for them."""

    def generate_stream(
        self,
        texts: Sequence[str],
        params: GenerationParams,
        adapter: str | None,
        on_text: Callable[[int, str], None],
    ) -> list[Generation]: ...


def generate_streaming(
    engine: Engine,
    texts: Sequence[str],
    params: GenerationParams,
    adapter: str | None,
    on_text: Callable[[int, str], None],
) -> list[Generation]:
    """`engine.generate_stream` where the engine streams, else `generate` with each row's text as one piece."""
    if isinstance(engine, StreamingEngine):
        return engine.generate_stream(texts, params, adapter, on_text)
    made = engine.generate(texts, params, adapter=adapter)
    for row, gen in enumerate(made):
        if gen.text:
            on_text(row, gen.text)
    return made


@runtime_checkable
class MixedBatchEngine(Engine, Protocol):
    """An Engine that batches rows of different stages together: each row brings its own text, generation settings
    and adapter (hf: PEFT's per-row `adapter_names`; vllm: a LoRARequest per prompt). Rows come back in order, each
    as `generate` would make it alone under its adapter. `generate_mixed` (the function) falls back to one `generate`
    per (settings, adapter) group for engines without it."""

    def generate_mixed(self, rows: Sequence[tuple[str, GenerationParams, str | None]]) -> list[Generation]: ...


def generate_mixed(engine: Engine, rows: Sequence[tuple[str, GenerationParams, str | None]]) -> list[Generation]:
    """One Generation per (text, params, adapter) row, in order: one mixed call where the engine batches stages
    together, else one `generate` call per distinct (params, adapter). Rows of one (params, adapter) are a plain
    `generate` call on every engine."""
    groups: dict[tuple[GenerationParams, str | None], list[int]] = {}
    for i, (_, params, adapter) in enumerate(rows):
        groups.setdefault((params, adapter), []).append(i)
    if len(groups) > 1 and isinstance(engine, MixedBatchEngine):
        return engine.generate_mixed(rows)
    results: list[Generation | None] = [None] * len(rows)
    for (params, adapter), members in groups.items():
        made = engine.generate([rows[i][0] for i in members], params, adapter=adapter)
        for i, gen in zip(members, made, strict=True):
            results[i] = gen
    return [r for r in results if r is not None]


BACKENDS = (
    "hf",
    "llamacpp",
    "openai",
    "vllm",
    "auto",
)  # the built-in names; `engine_names()` adds installed and registered engines
BACKEND_HELP = (
    "hf (transformers + PEFT, the reference), llamacpp (llama.cpp on GGUF, needs fslm[fast]), openai (an "
    "OpenAI-compatible server at $OPENAI_BASE_URL), vllm (vLLM with LoRA, its own "
    "virtualenv: make test-vllm), auto, "
    "or an engine plugin (docs/engine.md)"
)


def check_backend(backend: str) -> str:
    """The backend name if `load_engine` knows it; FslmError (naming the choices) otherwise. Imports no engine."""
    from fslm.errors import InputError

    if backend not in engine_names():
        raise InputError(f"unknown engine {backend!r}; choose {', '.join(engine_names())}")
    return backend


_HF_OPTIONS = ("batch_size", "score_batch_tokens", "score_logits_bytes", "prefix_cache_tokens")


def load_engine(model_ref: str, *, dtype: str = "float32", backend: str = "hf", **kwargs) -> Engine:
    """Build an engine for a model reference; the only place that picks a backend, by name from the registry
    (`fslm.engine.registry`: built-ins, `fslm.engines` entry points, `register_engine`).

    "hf": transformers + PEFT, the reference. "llamacpp": llama.cpp on GGUF weights (`fslm[fast]`, docs/engine.md).
    "auto": llama.cpp where it can run this model, else HF, said once on stderr."""
    from fslm.errors import FslmError

    check_backend(backend)
    if backend != AUTO:
        return engine_factory(backend)(model_ref, dtype=dtype, **kwargs)
    try:
        return engine_factory("llamacpp")(model_ref, dtype=dtype, **kwargs)
    except FslmError as err:  # runtime not installed, a hub reference, an architecture it cannot convert
        _note_once(f"note: {err}; using the HF engine")
    kwargs = {k: v for k, v in kwargs.items() if k in _HF_OPTIONS}  # drop llama.cpp-only options
    return engine_factory("hf")(model_ref, dtype=dtype, **kwargs)


_NOTED: set[str] = set()


def _note_once(message: str) -> None:
    import sys

    if message not in _NOTED:
        _NOTED.add(message)
        print(message, file=sys.stderr)


# ---- optional capability: the transformers model behind an engine ---------------------------------------------------
# Decoders that drive a model's forward passes themselves (assisted generation, contrastive decoding) and LoRA training
# need the torch model, which the Engine protocol does not promise: llama.cpp has none. They ask for this capability
# through `require_transformers`, so a wrong engine fails with one line instead of an AttributeError deep inside.


@runtime_checkable
class TransformersEngine(Engine, Protocol):
    """An Engine backed by an in-memory transformers model (the HF engine). Types stay `Any` so that importing this
    module never imports torch or transformers."""

    tokenizer: Any  # transformers PreTrainedTokenizerBase: the ids every method below speaks
    eos_ids: list[int]  # token ids that end a generation (model config and tokenizer)

    @property
    def device(self) -> Any: ...  # torch.device of the weights

    @property
    def base_model(self) -> Any: ...  # the bare transformers model, no adapters: training wraps it and unwraps it

    def encode(self, text: str) -> list[int]: ...  # ids of a (chat-rendered) text, no special tokens added

    def hf_model(self, adapter: str | None = None) -> AbstractContextManager[Any]:
        """The model to call with `adapter` active (None: adapters off) for the duration of the block; calls made
        on it are not counted in `stats` (the caller counts its own)."""
        ...


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when two tokenizers map every string to the same ids (same vocabulary and special tokens): what
    token-level decoding and distillation across two models need."""
    if a is b:
        return True
    return a.get_vocab() == b.get_vocab() and a.all_special_tokens == b.all_special_tokens


def require_transformers(engine: object, purpose: str) -> TransformersEngine:
    """`engine` if it exposes its transformers model; else one InputError saying `purpose` needs the hf engine."""
    from fslm.errors import InputError

    if not isinstance(engine, TransformersEngine):
        ref = getattr(engine, "model_ref", None)
        of = f" ({ref})" if ref else ""
        raise InputError(
            f"{purpose} runs on the transformers model step by step; the {type(engine).__name__} engine{of} has none: "
            "load it with the hf engine (--engine hf)"
        )
    return engine


__all__ = [
    "BACKENDS",
    "BACKEND_HELP",
    "Engine",
    "EngineStats",
    "Generation",
    "GenerationParams",
    "MixedBatchEngine",
    "Score",
    "StreamingEngine",
    "TransformersEngine",
    "check_backend",
    "engine_names",
    "generate_mixed",
    "generate_streaming",
    "load_engine",
    "register_engine",
    "require_transformers",
    "same_tokenizer",
]
