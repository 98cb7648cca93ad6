"""Contrastive decoding (Li et al., 2023): pick the token the expert likes much more than the amateur does.

At every step, among the tokens whose expert probability is at least ``alpha`` times the expert's top probability
(the plausible set), choose ``argmax log p_expert - log p_amateur / tau``. The plausibility cut keeps the amateur from
promoting tokens the expert finds unlikely; ``alpha = 1`` reduces to the expert's greedy decoding. Both models keep
their own KV cache, so a step costs one single-token forward of each; prompts run in left-padded batches with explicit
position ids, so a batch decodes exactly like one prompt at a time.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fslm.engine import Generation, GenerationParams, TransformersEngine, require_transformers, same_tokenizer
from fslm.engine.decode import cut_at_stop
from fslm.errors import InputError


@dataclass(frozen=True)
class ContrastiveParams:
    alpha: float = 0.1
    amateur_temperature: float = 1.0  # tau: >1 flattens the amateur, weakening the penalty

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise InputError(f"alpha must be in (0, 1], got {self.alpha} (0.1 is the paper's default)")
        if self.amateur_temperature <= 0:
            raise InputError(f"amateur_temperature must be > 0, got {self.amateur_temperature}")


def check_pair(expert: TransformersEngine, amateur: TransformersEngine) -> None:
    """Contrastive scores compare the two models token by token, so both must use the same tokenizer."""
    if not same_tokenizer(expert.tokenizer, amateur.tokenizer):
        raise InputError(
            f"contrastive decoding needs one tokenizer for both models: {expert.model_ref} and {amateur.model_ref} "
            f"have different vocabularies ({len(expert.tokenizer)} vs {len(amateur.tokenizer)} tokens). Pick an amateur "
            "from the expert's family (e.g. qwen2.5-coder-0.5b for qwen2.5-coder-1.5b)."
        )


def contrastive_scores(
    expert_logits: torch.Tensor, amateur_logits: torch.Tensor, params: ContrastiveParams
) -> torch.Tensor:
    """Per-token CD scores for one step ([batch, vocab]); implausible tokens get -inf."""
    vocab = min(expert_logits.shape[-1], amateur_logits.shape[-1])
    expert_lp = torch.log_softmax(expert_logits[..., :vocab].float(), dim=-1)
    amateur_lp = torch.log_softmax(amateur_logits[..., :vocab].float() / params.amateur_temperature, dim=-1)
    cutoff = expert_lp.max(dim=-1, keepdim=True).values + math.log(params.alpha)
    return torch.where(expert_lp >= cutoff, expert_lp - amateur_lp, torch.full_like(expert_lp, -math.inf))


def _forward(model, ids, attention, positions, cache):
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, past_key_values=cache, use_cache=True)
    return out.logits[:, -1], out.past_key_values


@torch.inference_mode()
def _decode_batch(
    expert: TransformersEngine,
    amateur: TransformersEngine,
    batch: list[list[int]],
    params: GenerationParams,
    cd: ContrastiveParams,
):
    device = expert.device
    pad_id = expert.tokenizer.pad_token_id
    width = max(len(ids) for ids in batch)
    ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in batch], device=device)
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch], device=device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    with expert.hf_model(None) as e_model, amateur.hf_model(None) as a_model:
        e_logits, e_cache = _forward(e_model, ids, attention, positions, None)
        a_logits, a_cache = _forward(a_model, ids, attention, positions, None)
        new: list[list[int]] = [[] for _ in batch]
        done = [False] * len(batch)
        reasons = ["length"] * len(batch)
        eos = set(expert.eos_ids)
        for _ in range(params.max_new_tokens):
            choice = contrastive_scores(e_logits, a_logits, cd).argmax(dim=-1)
            for row, tok in enumerate(choice.tolist()):
                if done[row]:
                    continue
                if tok in eos:
                    done[row], reasons[row] = True, "stop"
                    continue
                new[row].append(tok)
                if params.stop and cut_at_stop(expert.tokenizer.decode(new[row][-32:]), params.stop) is not None:
                    # Only the tail can hold a new stop string; the exact cut is redone on the full text below.
                    done[row], reasons[row] = True, "stop"
            if all(done):
                break
            step = torch.where(torch.tensor(done, device=device), torch.full_like(choice, pad_id), choice)[:, None]
            attention = torch.cat([attention, torch.ones_like(step)], dim=-1)
            positions = positions[:, -1:] + 1
            e_logits, e_cache = _forward(e_model, step, attention, positions, e_cache)
            a_logits, a_cache = _forward(a_model, step, attention, positions, a_cache)
    for engine in (expert, amateur):
        engine.stats.calls += 1
        engine.stats.forward_tokens += sum(len(x) for x in batch) + sum(len(x) for x in new)
    return new, reasons


def contrastive_generate(
    expert: TransformersEngine,
    amateur: TransformersEngine,
    texts: Sequence[str],
    params: GenerationParams = GenerationParams(),
    cd: ContrastiveParams = ContrastiveParams(),
    *,
    batch_size: int = 8,
) -> list[Generation]:
    """Contrastive greedy decoding of each text; returns the same `Generation` records as `Engine.generate`.
    Both engines must have the TransformersEngine capability (the hf engine): decoding steps both models' caches."""
    expert = require_transformers(expert, "contrastive decoding")
    amateur = require_transformers(amateur, "contrastive decoding (the amateur)")
    check_pair(expert, amateur)
    if params.temperature > 0:
        raise InputError("contrastive decoding here is greedy over the CD score; set temperature to 0")
    if params.repetition_penalty != 1.0 or getattr(params, "no_repeat_ngram_size", 0):
        raise InputError(
            "contrastive decoding already penalizes what the amateur repeats; leave repetition_penalty and "
            "no_repeat_ngram_size off"
        )
    encoded = [expert.encode(t) for t in texts]
    window = min(expert.context_window, amateur.context_window)
    for i, ids in enumerate(encoded):
        if not ids:
            raise InputError(f"input {i} is empty")
        if len(ids) + params.max_new_tokens > window:
            raise InputError(
                f"input {i} has {len(ids)} tokens; with max_new_tokens={params.max_new_tokens} it exceeds the context window ({window})"
            )
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        t0 = time.perf_counter()
        new, reasons = _decode_batch(expert, amateur, [encoded[i] for i in chunk], params, cd)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for i, tokens, reason in zip(chunk, new, reasons, strict=True):
            text = expert.tokenizer.decode(tokens, skip_special_tokens=True)
            cut = cut_at_stop(text, params.stop)
            if cut is not None:
                text, reason = cut, "stop"
            expert.stats.generated_tokens += len(tokens)
            results[i] = Generation(text.strip(), len(encoded[i]), len(tokens), seconds, reason)
    return [r for r in results if r is not None]


# ---- measures for the GSM8K comparison ------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The answer number of a worked solution: after 'answer is' or '####' if present, else the last number."""
    for marker in ("####", "answer is", "Answer:", "answer:"):
        if marker in text:
            found = _NUMBER.findall(text.rsplit(marker, 1)[1])
            if found:
                return _normalize(found[0])
    found = _NUMBER.findall(text)
    return _normalize(found[-1]) if found else None


def _normalize(number: str) -> str:
    number = number.replace(",", "").rstrip(".")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number


def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """Share of word n-grams that already occurred earlier in the same text (0 = no repetition)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
