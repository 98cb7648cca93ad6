"""Batched decoding that drops finished rows.

`model.generate` keeps every row of a batch until the longest one ends, so a stage whose rows stop after 8, 12 and 40
tokens pays for 40 x batch. Here a finished row leaves the batch (its KV cache rows are cut out), so each step costs
only what is still being written. Prefill computes logits for the last position only.

The logits processors are the CTRL repetition penalty and an n-gram loop guard, both written so that left padding and
batch-mates never change a row's output: greedy in a batch equals greedy alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fslm.engine import GenerationParams
from fslm.errors import InputError


def penalize(logits: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty on the logits of seen tokens: positive ones divided, negative ones multiplied."""
    return torch.where(logits < 0, logits * penalty, logits / penalty)


class PromptOnlyRepetitionPenalty:
    """CTRL-style repetition penalty that ignores left padding (an HF logits processor).

    transformers' processor also penalizes pad tokens, so a padded row would decode differently from the
    same prompt run alone; this one looks only at each row's real tokens, keeping batch == one-by-one.
    """

    def __init__(self, penalty: float, pad_lengths: list[int]):
        self.penalty = penalty
        self.pad_lengths = pad_lengths

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, pad in enumerate(self.pad_lengths):
            seen = input_ids[row, pad:].unique()
            scores[row, seen] = penalize(scores[row, seen], self.penalty)
        return scores


class GeneratedNoRepeatNGram:
    """Ban a token that would repeat an n-gram of the text generated so far (an HF logits processor).

    Unlike transformers' no_repeat_ngram_size this ignores the prompt, so a stage may still copy phrases from
    earlier stages; it only breaks the loops small models fall into ("a fleeting sight, a fleeting sight, ...").
    """

    def __init__(self, n: int, prompt_width: int):
        self.n = n
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, tokens in enumerate(input_ids[:, self.prompt_width :].tolist()):
            banned = banned_ngram_tokens(tokens, self.n)
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores


def banned_ngram_tokens(generated: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in `generated`."""
    if n <= 0 or len(generated) < n:
        return set()
    prefix = list(generated[len(generated) - n + 1 :])
    return {generated[i + n - 1] for i in range(len(generated) - n + 1) if list(generated[i : i + n - 1]) == prefix}


def cut_at_stop(text: str, stops: Sequence[str]) -> str | None:
    """`text` up to the first stop string, or None when none occurs."""
    positions = [text.find(s) for s in stops if s and s in text]
    if not positions:
        return None
    return text[: min(positions)]


@dataclass
class Decoded:
    tokens: list[int]  # generated tokens, without the eos token
    reason: str  # "stop" (eos or a stop string) or "length"


def render_chat_text(tokenizer, messages: Sequence[dict[str, str]]) -> str:
    """The exact text a model sees for chat messages: its chat template, or for base models without one a plain
    transcript it can continue. One function for every engine that uses a Hugging Face tokenizer."""
    if not getattr(tokenizer, "chat_template", None):
        parts = [
            f"{m['content']}" if m["role"] == "system" else f"{m['role'].capitalize()}: {m['content']}"
            for m in messages
        ]
        return "\n\n".join(parts) + "\n\nAssistant:"
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def split_pair(encode, start_id: int, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval-harness's split of a scored pair, for every engine: trailing context spaces move to the continuation,
    tokens are cut at len(encode(context)); an empty context becomes `start_id` (BOS, else EOS)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = encode(context + continuation)
    ctx = encode(context) if context else []
    if not ctx:
        return [start_id], whole
    return ctx, whole[len(ctx) :]


def fit_pairs(pairs: list[tuple[list[int], list[int]]], window: int) -> list[tuple[list[int], list[int]]]:
    """Scored pairs made to fit `window` tokens, for every engine: an empty continuation is refused, a context that
    does not fit is cut from the left (lm-eval's truncation), a continuation that alone does not fit is refused."""
    fitted = []
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise InputError(f"continuation {i} is empty after tokenization")
        if len(ctx) + len(cont) > window:
            keep = window - len(cont)
            if keep < 1:
                raise InputError(f"continuation {i} alone exceeds the context window of {window}")
            ctx = ctx[-keep:]
        fitted.append((ctx, cont))
    return fitted


def supports_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _pick(logits: torch.Tensor, params: GenerationParams) -> torch.Tensor:
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= params.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, -float("inf"))
        logits = torch.full_like(logits, -float("inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1).squeeze(-1)


def next_tokens(
    logits: torch.Tensor,
    params: GenerationParams,
    seen: torch.Tensor | None,
    generated: Sequence[Sequence[int]],
) -> torch.Tensor:
    """One decode step's choice for every live row: the prompt-only repetition penalty (where `seen` marks prompt
    tokens), the generated-only n-gram ban, then greedy or seeded sampling. Shared by every engine's decode loop, so
    their texts agree by construction. `logits` (live rows x vocab) is changed in place."""
    if seen is not None:
        logits[seen] = penalize(logits[seen], params.repetition_penalty)
    if params.no_repeat_ngram_size:
        for live, tokens in enumerate(generated):
            banned = banned_ngram_tokens(tokens, params.no_repeat_ngram_size)
            if banned:
                logits[live, list(banned)] = -float("inf")
    return _pick(logits, params)


@dataclass
class Prefilled:
    """A batch whose prompts have run: last-position logits, the KV cache, the attention mask over the cache (padding
    masked) and each row's next position id."""

    logits: torch.Tensor
    cache: Any
    attention: torch.Tensor
    next_pos: torch.Tensor


@torch.inference_mode()
def prefill(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    prefix: tuple[int, object] | None = None,
    adapter_names: Sequence[str] | None = None,
) -> Prefilled:
    """Run the prompts (left-padded; after a copy of `prefix`'s cache when given) and keep what decoding needs."""
    import copy

    from transformers import DynamicCache

    device = next(model.parameters()).device
    k = prefix[0] if prefix is not None else 0
    rest = [list(p[k:]) for p in prompts]
    width = max(len(p) for p in rest)
    pads = [width - len(p) for p in rest]
    input_ids = torch.tensor([[pad_id] * n + p for n, p in zip(pads, rest)], device=device)
    attention = torch.tensor([[1] * k + [0] * n + [1] * len(p) for n, p in zip(pads, rest)], device=device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, k:]
    if prefix is not None:
        cache = copy.deepcopy(prefix[1])
        cache.batch_repeat_interleave(len(prompts))
    else:
        cache = DynamicCache()
    extra = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    mixed = {} if adapter_names is None else {"adapter_names": list(adapter_names)}
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        **extra,
        **mixed,
    )
    return Prefilled(out.logits[:, -1, :].float(), out.past_key_values, attention, positions[:, -1:] + 1)


def join_prefilled(parts: Sequence[tuple[Sequence[int], Prefilled]]) -> Prefilled | None:
    """One batch from batches prefilled apart (each under its own adapter, with its own stage-head reuse): `parts`
    are (rows of the joint batch, their Prefilled). Caches are left-padded to one width, masked, and rows put back in
    order; positions are the rows' own. None where a cache is not full-attention DynamicLayers (sliding windows keep
    only their last tokens, so padding them is not a no-op): the caller then prefills the batch as one."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    caches = [p.cache for _, p in parts]
    for cache in caches:
        layers = getattr(cache, "layers", None)
        if type(cache) is not DynamicCache or not layers or any(type(x) is not DynamicLayer for x in layers):
            return None
        if any(x.keys is None or x.keys.shape[2] != cache.get_seq_length() for x in layers):
            return None
    if len({len(c.layers) for c in caches}) != 1:
        return None
    width = max(p.attention.shape[1] for _, p in parts)
    order = [row for rows, _ in parts for row in rows]
    index = torch.tensor(sorted(range(len(order)), key=order.__getitem__), device=parts[0][1].attention.device)

    def joined(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
        padded = []
        for t in tensors:
            pad = [0, 0] * (t.dim() - 1 - dim) + [width - t.shape[dim], 0]
            padded.append(torch.nn.functional.pad(t, pad))
        return torch.cat(padded)[index]

    data = [
        (joined([c.layers[i].keys for c in caches], 2), joined([c.layers[i].values for c in caches], 2))
        for i in range(len(caches[0].layers))
    ]
    return Prefilled(
        torch.cat([p.logits for _, p in parts])[index],
        DynamicCache(data),
        joined([p.attention for _, p in parts], 1),
        torch.cat([p.next_pos for _, p in parts])[index],
    )


@torch.inference_mode()
def decode_batch(
    model,
    prompts: Sequence[Sequence[int]],
    params: GenerationParams,
    *,
    pad_id: int,
    eos_ids: Sequence[int],
    decode_text=None,
    prefix: tuple[int, object] | None = None,
    on_token: Callable[[int, list[int]], None] | None = None,
    on_step: Callable[[list[int], torch.Tensor, torch.Tensor], None] | None = None,
    limits: Sequence[int] | None = None,
    stops: Sequence[Sequence[str]] | None = None,
    adapter_names: Sequence[str] | None = None,
    start: Prefilled | None = None,
    row_adapters=None,
) -> list[Decoded]:
    """Generate for token-id prompts (any lengths) as one batch; rows leave the batch as they finish.

    Rows of different stages can share the batch: `limits` and `stops` are each row's max_new_tokens and stop strings
    (default: `params`'), and `adapter_names` each row's PEFT adapter ("__base__" for none), passed with every
    forward as PEFT's mixed-batch argument; the other settings of `params` (sampling, penalties) are shared.
    `start`: the batch already prefilled (`prefill`, `join_prefilled`); `prefix` is then not used. `row_adapters`
    instead of `adapter_names`: per-row adapters the model applies itself (fslm.engine.rowlora.RowLoRA, entered by the
    caller), told the live rows with `select(rows)` whenever rows leave.

    `decode_text(tokens) -> str` is needed only when a row has stop strings. `prefix` = (k, KV cache of the
    first k tokens, batch 1), which every prompt starts with: only the rest is run, after a copy of that cache; the
    padding then sits between the shared head and each row's own tokens, masked out, and positions skip it.
    `on_token(row, generated)` is called after every token a row keeps (streaming, fslm.engine.streaming); it does
    not change what is decoded. `on_step(rows, logprobs, picked)` gets each step's raw log-softmax (before any
    penalty or sampling change) and the picked tokens of the live rows (fslm.engine.logprobs.StepRecorder).
    """
    limits = [params.max_new_tokens] * len(prompts) if limits is None else list(limits)
    stops = [params.stop] * len(prompts) if stops is None else list(stops)
    if any(stops) and decode_text is None:
        raise ValueError("stop strings need decode_text to turn tokens back into text")
    if len(limits) != len(prompts) or len(stops) != len(prompts):
        raise ValueError("limits and stops need one entry per prompt")
    if adapter_names is not None and len(adapter_names) != len(prompts):
        raise ValueError("adapter_names needs one entry per prompt")
    device = next(model.parameters()).device
    if params.seed is not None:
        torch.manual_seed(params.seed)
    if start is None:
        start = prefill(model, prompts, pad_id=pad_id, prefix=prefix, adapter_names=adapter_names)
    logits, cache, attention, next_pos = start.logits, start.cache, start.attention, start.next_pos
    rows = list(range(len(prompts)))  # original index of each live row
    mixed = {} if adapter_names is None else {"adapter_names": list(adapter_names)}

    vocab = logits.shape[-1]
    use_penalty = params.repetition_penalty != 1.0
    if use_penalty:  # which tokens each row has seen (its own prompt and output; never padding)
        seen = torch.zeros(len(prompts), vocab, dtype=torch.bool, device=device)
        for row, p in enumerate(prompts):
            seen[row, torch.tensor([t for t in p if t < vocab], dtype=torch.long, device=device)] = True
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    generated: list[list[int]] = [[] for _ in prompts]
    results: list[Decoded | None] = [None] * len(prompts)

    for step in range(max(limits)):
        raw = logits.log_softmax(dim=-1) if on_step is not None else None
        tokens = next_tokens(logits, params, seen if use_penalty else None, [generated[row] for row in rows])
        if on_step is not None:
            on_step(rows, raw, tokens)
        is_eos = torch.isin(tokens, eos).tolist()
        keep: list[int] = []
        for live, (row, token, ended) in enumerate(zip(rows, tokens.tolist(), is_eos)):
            if ended:
                results[row] = Decoded(generated[row], "stop")
                continue
            generated[row].append(token)
            if on_token is not None:
                on_token(row, generated[row])
            if stops[row] and cut_at_stop(decode_text(generated[row][-48:]), stops[row]) is not None:
                results[row] = Decoded(generated[row], "stop")
            elif step + 1 == limits[row]:
                results[row] = Decoded(generated[row], "length")
            else:
                keep.append(live)
        if not keep:
            break
        if use_penalty:
            seen[torch.arange(len(rows), device=device), tokens] = True
        if len(keep) < len(rows):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            attention, next_pos, tokens = attention[index], next_pos[index], tokens[index]
            if use_penalty:
                seen = seen[index]
            rows = [rows[i] for i in keep]
            if row_adapters is not None:
                row_adapters.select(rows)
        if adapter_names is not None:
            mixed = {"adapter_names": [adapter_names[row] for row in rows]}
        attention = torch.cat([attention, attention.new_ones(len(rows), 1)], dim=1)
        out = model(
            input_ids=tokens[:, None],
            attention_mask=attention,
            position_ids=next_pos,
            past_key_values=cache,
            use_cache=True,
            **mixed,
        )
        logits = out.logits[:, -1, :].float()
        cache = out.past_key_values
        next_pos = next_pos + 1
    return [r if r is not None else Decoded([], "length") for r in results]
