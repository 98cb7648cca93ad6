"""Step-wise next-token logits: an optional engine capability for decoders that pick tokens themselves.

Logit fusion (proxy-tuning) and similar lock-step decoders need, at every step, several models' next-token logits
for the same token history, and then choose the token outside any one model. A `LogitsSession` is one model's side
of that: it runs a batch of prompts once (left-padded, explicit position ids, so a row's logits do not depend on its
batch-mates' lengths), keeps the KV cache, and from then on each `advance` feeds one chosen token per live row and
returns the next logits: one single-token forward per step, never a recompute of the prefix. Finished rows leave
with `keep`. The adapter is switched on for each forward only, so two sessions on one engine (the same base model
with and without a LoRA adapter) can interleave.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from fslm.engine import Engine, EngineStats
from fslm.errors import InputError


class LogitsSession:
    """Next-token logits of a batch of token-id prompts, advanced one token per live row at a time on a KV cache.

    `forward(**inputs)` runs the model (with its adapter active) and returns its output; the engine builds it."""

    def __init__(
        self,
        forward: Callable[..., Any],
        prompts: Sequence[Sequence[int]],
        *,
        pad_id: int,
        device: torch.device,
        stats: EngineStats,
        keep_last: dict[str, int] | None = None,
    ):
        from transformers import DynamicCache

        if not prompts or any(len(p) == 0 for p in prompts):
            raise InputError("a logits session needs at least one prompt, each with at least one token")
        self._forward = forward
        self._stats = stats
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
        self.attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (self.attention.cumsum(-1) - 1).clamp(min=0)
        self.logits = self._run(ids, positions, DynamicCache(), keep_last or {})
        self.next_pos = positions[:, -1:] + 1
        stats.calls += 1
        stats.forward_tokens += sum(len(p) for p in prompts)

    @property
    def rows(self) -> int:
        """Live rows: the first dimension of `logits`."""
        return int(self.logits.shape[0])

    @torch.inference_mode()
    def _run(self, ids: torch.Tensor, positions: torch.Tensor, cache, extra: dict) -> torch.Tensor:
        out = self._forward(
            input_ids=ids,
            attention_mask=self.attention,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            **extra,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1, :].float()

    def advance(self, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Feed one token per live row; returns (and keeps in `logits`) the next logits, float32 [rows, vocab]."""
        device = self.attention.device
        step = torch.as_tensor(tokens, dtype=torch.long, device=device).reshape(-1, 1)
        if step.shape[0] != self.rows:
            raise ValueError(f"advance needs one token per live row ({self.rows}), got {step.shape[0]}")
        self.attention = torch.cat([self.attention, self.attention.new_ones(self.rows, 1)], dim=1)
        self.logits = self._run(step, self.next_pos, self.cache, {})
        self.next_pos = self.next_pos + 1
        self._stats.forward_tokens += self.rows
        return self.logits

    def keep(self, live: Sequence[int]) -> None:
        """Keep only these live rows (indices into the current rows, in order); their cache rows stay, others go.
        An index may repeat: that row is copied (several continuations of one prompt, run once)."""
        if list(live) == list(range(self.rows)):
            return
        index = torch.tensor(list(live), dtype=torch.long, device=self.attention.device)
        self.cache.batch_select_indices(index)
        self.attention, self.next_pos, self.logits = self.attention[index], self.next_pos[index], self.logits[index]


@runtime_checkable
class StepLogitsEngine(Engine, Protocol):
    """An Engine that opens `LogitsSession`s (the hf engine). Token ids are its tokenizer's."""

    tokenizer: Any  # a transformers tokenizer: the ids sessions speak
    eos_ids: list[int]

    def encode(self, text: str) -> list[int]: ...

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]: ...  # as `score` splits

    def logits_session(self, prompts: Sequence[Sequence[int]], adapter: str | None = None) -> LogitsSession: ...


def require_step_logits(engine: object, purpose: str) -> StepLogitsEngine:
    """`engine` if it opens logits sessions; else one InputError saying `purpose` needs the hf engine."""
    if not isinstance(engine, StepLogitsEngine):
        ref = getattr(engine, "model_ref", None)
        of = f" ({ref})" if ref else ""
        raise InputError(
            f"{purpose} runs on each model's next-token logits step by step; the {type(engine).__name__} engine{of} "
            "has none: load it with the hf engine (--engine hf)"
        )
    return engine
