"""Token log-probabilities of generated text (OpenAI's `logprobs`): an optional engine capability.

A `LogprobEngine` generates exactly as `generate` / `generate_stream` do (same decode loop, same texts) and also
returns, for each kept token, its log-probability and the `top` most likely tokens at that step. The values are the
model's own distribution (log-softmax of the raw logits, before the repetition penalty, n-gram ban, temperature or
top-p change them, as vLLM reports by default), so they equal what `Engine.score` gives the same tokens.

Both decode loops (decode.decode_batch, LlamaCppEngine._decode) call an `on_step(rows, logprobs, picked)` hook
with the raw log-softmax before the next token is picked; `StepRecorder` is that hook.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fslm.engine import Engine, Generation, GenerationParams

MAX_TOP_LOGPROBS = 20  # OpenAI's chat limit


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # the most likely tokens at this step, best first


@dataclass(frozen=True)
class LoggedGeneration:
    generation: Generation
    tokens: list[TokenLogprob]  # one per token of generation.text (a stop string's tokens and EOS left out)


@runtime_checkable
class LogprobEngine(Engine, Protocol):
    def generate_logprobs(
        self,
        texts: Sequence[str],
        params: GenerationParams,
        adapter: str | None,
        top: int,
        on_text: Callable[[int, str], None] | None = None,
    ) -> list[LoggedGeneration]: ...


def logprobs_refusal(engine: Engine) -> str | None:
    """Why `engine` cannot return log-probabilities, or None when it can."""
    if isinstance(engine, LogprobEngine):
        return None
    return f"the {type(engine).__name__} engine of {engine.model_ref} does not return token log-probabilities"


class StepRecorder:
    """The decode loops' `on_step` hook: per row of one batch, (token id, its log-probability, top-k (id, lp))."""

    def __init__(self, n_rows: int, top: int):
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top must be 0 to {MAX_TOP_LOGPROBS}, got {top}")
        self.top = top
        self.steps: list[list[tuple[int, float, list[tuple[int, float]]]]] = [[] for _ in range(n_rows)]

    def __call__(self, rows: Sequence[int], logprobs, picked) -> None:
        chosen = logprobs.gather(-1, picked[:, None]).squeeze(-1).tolist()
        if self.top:
            values, ids = logprobs.topk(self.top, dim=-1)
            alts = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        else:
            alts = [[] for _ in rows]
        for live, row in enumerate(rows):
            self.steps[row].append((int(picked[live]), float(chosen[live]), alts[live]))


def token_logprobs(
    steps: Sequence[tuple[int, float, list[tuple[int, float]]]],
    n_tokens: int,
    text: str,
    decode: Callable[[list[int]], str],
) -> list[TokenLogprob]:
    """The steps behind a Generation's text: its n_tokens kept tokens (an EOS step dropped), then only as many as it
    takes to cover `text` (a stop string's tokens after the cut and stripped trailing whitespace dropped)."""
    kept = list(steps[:n_tokens])
    ids = [s[0] for s in kept]
    keep = 0
    if text:
        keep = len(kept)
        for m in range(1, len(kept) + 1):
            if len(decode(ids[:m]).strip()) >= len(text):
                keep = m
                break
    return [TokenLogprob(i, decode([i]), lp, tuple((decode([a]), v) for a, v in alts)) for i, lp, alts in kept[:keep]]
