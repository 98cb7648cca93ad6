"""Proxy-tuning (Liu et al., 2024): steer a frozen large model with what fine-tuning changed in a small one.

At every step, with all three models fed the same tokens,

    fused = log_softmax(large) + alpha * (log_softmax(tuned) - log_softmax(base))

and the next token is the argmax of `fused` (greedy) or a sample from it (temperature / top-p, the engines' own
sampling code). `alpha = 0` is the large model alone; `tuned == base` adds nothing. The three models must share one
tokenizer; output layers padded past it (Qwen2.5's 151936 rows for 151665 tokens) are cut to the tokenizer's length.
Each model keeps its KV cache through a `LogitsSession` (fslm.engine.stepping), so a step costs one single-token
forward of each. TUNED and BASE are usually one small model with and without a LoRA adapter: one engine, two
sessions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fslm.collaborate.proxy_params import ModelRef, ProxyTuneParams, adapter_name, parse_expert_delta
from fslm.engine import Generation, GenerationParams, same_tokenizer
from fslm.engine.decode import cut_at_stop, next_tokens
from fslm.engine.stepping import LogitsSession, StepLogitsEngine, require_step_logits
from fslm.errors import InputError

OnStep = Callable[[list[int], torch.Tensor, torch.Tensor], None]  # (original rows, fused scores, picked tokens)


@dataclass(frozen=True)
class Expert:
    """One model of the fusion: an engine and the adapter active for its forwards (None: adapters off)."""

    engine: StepLogitsEngine
    adapter: str | None = None

    @property
    def name(self) -> str:
        return self.engine.model_ref + (f" (adapter {self.adapter})" if self.adapter else "")


def as_expert(x: object, what: str) -> Expert:
    """An Expert from an Expert or a bare engine (adapters off); the engine must give step-wise logits."""
    if isinstance(x, Expert):
        return Expert(require_step_logits(x.engine, f"proxy-tuning ({what})"), x.adapter)
    return Expert(require_step_logits(x, f"proxy-tuning ({what})"))


def fused_scores(
    large: torch.Tensor, tuned: torch.Tensor, base: torch.Tensor, alpha: float, vocab: int
) -> torch.Tensor:
    """log_softmax(large) + alpha * (log_softmax(tuned) - log_softmax(base)) over the first `vocab` ids, [rows, vocab]."""

    def lp(x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x[..., :vocab].float(), dim=-1)

    fused = lp(large)
    if alpha != 0:
        fused = fused + alpha * (lp(tuned) - lp(base))
    return fused


def check_models(large: Expert, tuned: Expert, base: Expert) -> int:
    """One tokenizer for all three (else one InputError); returns its length, the vocabulary the scores span."""
    for other, role in ((tuned, "tuned"), (base, "base")):
        if not same_tokenizer(large.engine.tokenizer, other.engine.tokenizer):
            raise InputError(
                f"proxy-tuning needs one tokenizer for all three models: the large model {large.name} and the {role} "
                f"model {other.name} have different vocabularies ({len(large.engine.tokenizer)} vs "
                f"{len(other.engine.tokenizer)} tokens). Use small models of the large model's family "
                "(e.g. qwen2.5-coder-0.5b for qwen2.5-coder-1.5b)."
            )
    return len(large.engine.tokenizer)


def load_expert(ref: ModelRef, get: Callable[[str], object]) -> Expert:
    """The Expert of a MODEL[+ADAPTER_DIR] reference: `get(model)` gives the model's engine (loading each model once,
    so TUNED and BASE naming one model share one engine), and the adapter is loaded under a name of its own."""
    engine = get(ref.model)
    if ref.adapter is None:
        return as_expert(engine, str(ref))
    name = adapter_name(ref.adapter)
    engine.add_adapter(name, ref.adapter)  # type: ignore[attr-defined]
    return as_expert(Expert(engine, name), str(ref))  # type: ignore[arg-type]


def open_sessions(experts: Sequence[Expert], prompts: list[list[int]], vocab: int) -> list[LogitsSession]:
    """One logits session per expert on the same prompts; an output layer narrower than the tokenizer is refused."""
    sessions = [e.engine.logits_session(prompts, e.adapter) for e in experts]
    for expert, session in zip(experts, sessions, strict=True):
        if session.logits.shape[-1] < vocab:
            raise InputError(
                f"{expert.name}: an output layer of {session.logits.shape[-1]} rows is smaller than the tokenizer "
                f"({vocab} ids)"
            )
    return sessions


def _check_params(params: GenerationParams) -> None:
    if params.repetition_penalty != 1.0:
        raise InputError(
            "proxy-tuning picks from fused log-probabilities; leave repetition_penalty at 1.0 "
            "(no_repeat_ngram_size works)"
        )


@torch.inference_mode()
def _decode_batch(
    experts: tuple[Expert, Expert, Expert],
    prompts: list[list[int]],
    params: GenerationParams,
    alpha: float,
    vocab: int,
    on_step: OnStep | None,
) -> tuple[list[list[int]], list[str]]:
    large = experts[0]
    if params.seed is not None:
        torch.manual_seed(params.seed)
    sessions = open_sessions(experts, prompts, vocab)
    device = sessions[0].logits.device
    eos = {i for e in experts for i in e.engine.eos_ids}  # one tokenizer: any member's end token ends the text
    rows = list(range(len(prompts)))  # original index of each live row
    new: list[list[int]] = [[] for _ in prompts]
    reasons = ["length"] * len(prompts)
    for step in range(params.max_new_tokens):
        logits = [s.logits.to(device) for s in sessions]
        fused = fused_scores(*logits, alpha, vocab)
        tokens = next_tokens(fused.clone(), params, None, [new[r] for r in rows])
        if on_step is not None:
            on_step(list(rows), fused, tokens)
        keep: list[int] = []
        for live, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            if token in eos:
                reasons[row] = "stop"
                continue
            new[row].append(token)
            # Only the tail can hold a new stop string; the exact cut is redone on the full text afterwards.
            if params.stop and cut_at_stop(large.engine.tokenizer.decode(new[row][-48:]), params.stop) is not None:
                reasons[row] = "stop"
                continue
            keep.append(live)
        if not keep or step + 1 == params.max_new_tokens:
            break
        picked = tokens[torch.tensor(keep, dtype=torch.long, device=tokens.device)]
        rows = [rows[i] for i in keep]
        for session in sessions:
            session.keep(keep)
            session.advance(picked.to(session.logits.device))
    return new, reasons


def proxy_generate(
    large: object,
    tuned: object,
    base: object,
    texts: Sequence[str],
    params: GenerationParams = GenerationParams(),
    proxy: ProxyTuneParams = ProxyTuneParams(),
    *,
    batch_size: int = 8,
    on_step: OnStep | None = None,
) -> list[Generation]:
    """Proxy-tuned decoding of each text; the same `Generation` records as `Engine.generate`, counted as the large
    model's. `large`/`tuned`/`base`: engines with step-wise logits (the hf engine) or `Expert(engine, adapter)`.
    `on_step(rows, fused, picked)` sees every step's fused scores of the live rows (their indices in the batch)."""
    experts = (
        as_expert(large, "the large model"),
        as_expert(tuned, "the tuned model"),
        as_expert(base, "the base model"),
    )
    vocab = check_models(*experts)
    _check_params(params)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    lead = experts[0].engine
    window = min(e.engine.context_window for e in experts)
    encoded = [lead.encode(t) for t in texts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise InputError(f"input {i} is empty")
        if len(ids) + params.max_new_tokens > window:
            raise InputError(
                f"input {i} has {len(ids)} tokens; with max_new_tokens={params.max_new_tokens} it exceeds the "
                f"smallest context window of the three models ({window})"
            )
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        t0 = time.perf_counter()
        hook = None if on_step is None else (lambda rows, f, t, chunk=chunk: on_step([chunk[r] for r in rows], f, t))
        new, reasons = _decode_batch(experts, [encoded[i] for i in chunk], params, proxy.alpha, vocab, hook)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for i, tokens, reason in zip(chunk, new, reasons, strict=True):
            text = lead.tokenizer.decode(tokens, skip_special_tokens=True)
            cut = cut_at_stop(text, params.stop)
            if cut is not None:
                text, reason = cut, "stop"
            lead.stats.generated_tokens += len(tokens)
            results[i] = Generation(text.strip(), len(encoded[i]), len(tokens), seconds, reason)
    return [r for r in results if r is not None]


__all__ = [
    "Expert",
    "ModelRef",
    "ProxyTuneParams",
    "adapter_name",
    "check_models",
    "fused_scores",
    "load_expert",
    "open_sessions",
    "parse_expert_delta",
    "proxy_generate",
]
