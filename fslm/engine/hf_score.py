"""Scoring on the HF engine: the sum of log-probabilities of continuations, lm-eval's split and truncation.

A mixin of `HFEngine` (fslm/engine/hf.py), which provides the model, tokenizer, adapters and budgets. The main path
packs each context with all its continuations (a 4D mask lets each continuation see the context and itself only), and
several such units side by side into one row (each sees only itself), so a context is run once, rows carry little
padding and many items share a forward pass. Models that do not honour such a mask
(checked once by a probe) get the older paths: distinct contexts in length-sorted batches, and a long context shared by
several continuations run once with its KV cache copied. A head that every context shares (a primer, few-shot
examples) is run once per call, its cache reused by each context."""

from __future__ import annotations

import bisect
import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fslm.engine import Score
from fslm.engine.decode import fit_pairs, split_pair


class HFScoring:
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval-harness's split (decode.split_pair)."""
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_ids[0]
        return split_pair(self.encode, start, context, continuation)

    def score(self, contexts: Sequence[str], continuations: Sequence[str], adapter: str | None = None) -> list[Score]:
        if len(contexts) != len(continuations):
            raise ValueError("contexts and continuations must have the same length")
        pairs = fit_pairs([self.encode_pair(c, x) for c, x in zip(contexts, continuations)], self.context_window)
        results: list[Score | None] = [None] * len(pairs)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (ctx, _) in enumerate(pairs):
            groups[tuple(ctx)].append(i)
        with self._active(adapter) as model:
            head = self._common_head(model, list(groups))
            if self._packs(model) and _fits_window(self.base.config, pairs):
                self._score_packed(model, list(groups.items()), pairs, results, head)
            else:
                self._score_unpacked(model, groups, pairs, results, head)
        for i, score in enumerate(results):
            assert score is not None
            results[i] = Score(score.logprob, score.n_tokens, score.is_greedy, len(continuations[i]))
        return [r for r in results if r is not None]

    def _score_unpacked(self, model, groups: dict[tuple[int, ...], list[int]], pairs, results, head) -> None:
        """Without packing: a context with several continuations that outweighs them (or follows a shared head) runs
        once and its KV cache is copied per continuation; the rest go in flat length-sorted batches."""
        flat: list[int] = []
        for ctx, members in groups.items():
            cont_tokens = sum(len(pairs[i][1]) for i in members)
            if head is not None or (len(members) > 1 and len(ctx) > cont_tokens):
                self._score_shared_prefix(model, list(ctx), members, pairs, results, head)
            else:
                flat.extend(members)
        self._score_flat(model, flat, pairs, results)

    @torch.inference_mode()
    def _score_flat(self, model, indices: list[int], pairs, results) -> None:
        order = sorted(indices, key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        start = 0
        while start < len(order):
            width = len(pairs[order[start]][0]) + len(pairs[order[start]][1])
            by_logits = self.score_logits_bytes // max(width * self.vocab_size * 4, 1)
            size = max(1, min(self.batch_size * 4, self.score_batch_tokens // max(width, 1), by_logits))
            batch = order[start : start + size]
            start += size
            seqs = [(pairs[i][0] + pairs[i][1])[:-1] for i in batch]  # the last token predicts nothing we need
            width = max(len(s) for s in seqs)
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
            # Logits only from the earliest position any row needs: the lm_head is a fifth of the model's FLOPs.
            offset = min(len(pairs[i][0]) for i in batch) - 1
            logits = model(input_ids=ids, attention_mask=mask, **self._keep_logits(width - offset)).logits[
                :, -(width - offset) :
            ]
            self.stats.calls += 1
            self.stats.forward_tokens += int(mask.sum())
            for row, i in enumerate(
                batch
            ):  # log-softmax of the continuation positions only: no second full-size tensor
                ctx, cont = pairs[i]
                first = len(ctx) - 1 - offset
                rows = torch.log_softmax(logits[row, first : first + len(cont)].float(), dim=-1)
                results[i] = _score_rows(rows, cont)
            del logits

    # ---- packed scoring: every continuation of a context in one row, beside the context -------------------------
    def _packs(self, model) -> bool:
        """Whether this model honours a 4D attention mask with explicit positions (checked once by a probe: two
        continuations packed after one context must score as each does alone). Models that do not get the
        cache-copy paths instead."""
        if self._packing is None:
            self._packing = _probe_packing(model, self.device)
        return self._packing

    @torch.inference_mode()
    def _score_packed(self, model, groups, pairs, results, head=None) -> None:
        """A unit is a context followed by its continuations, each continuation seeing the context and itself only
        (positions restart after the context); several units share a row when they fit (each sees only itself), so
        rows carry little padding. The work is each context once plus every continuation, many items share one
        forward pass, and the output layer runs only where a continuation token is predicted. With `head` (k, cache
        of the first k tokens every context shares) every unit starts after it."""
        past = head[0] if head is not None else 0
        units = []
        for ctx, members in groups:
            own = list(ctx[past:])
            cap = max(self.score_batch_tokens, len(own) + max(len(pairs[i][1]) for i in members))
            chunk: list[int] = []
            used = len(own)
            for i in members:
                if chunk and used + len(pairs[i][1]) > cap:
                    units.append(_Unit(own, [(j, pairs[j][1]) for j in chunk]))
                    chunk, used = [], len(own)
                chunk.append(i)
                used += len(pairs[i][1])
            units.append(_Unit(own, [(j, pairs[j][1]) for j in chunk]))
        rows = fill_rows(units, _row_width(units, self.score_batch_tokens))
        rows.sort(key=lambda r: -r.width)
        start = 0
        while start < len(rows):
            width, size, picked = rows[start].width, 1, rows[start].n_scored
            for row in rows[start + 1 : start + self.batch_size * 4]:
                n = size + 1
                if (
                    n * width > self.score_batch_tokens
                    or (picked + row.n_scored) * self.vocab_size * 4 > self.score_logits_bytes
                    or n * width * (past + width) * 4 > self.score_logits_bytes  # the mask
                ):
                    break
                size, picked = n, picked + row.n_scored
            batch = rows[start : start + size]
            start += size
            logprobs = _packed_logprobs(model, batch, self.tokenizer.pad_token_id, self.device, head)
            self.stats.calls += 1
            self.stats.forward_tokens += sum(r.width for r in batch)
            at = 0
            for row in batch:
                for i, cont, _ in row.spans():
                    results[i] = _score_rows(logprobs[at : at + len(cont)], cont)
                    at += len(cont)

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer (can exceed the tokenizer's vocabulary: padded embeddings)."""
        return int(self.base.get_output_embeddings().weight.shape[0])

    @torch.inference_mode()
    def _common_head(self, model, contexts: list[tuple[int, ...]], min_tokens: int = 64):
        """(k, KV cache) of the first k tokens that every distinct context shares (a primer, few-shot examples),
        run once per call; None when fewer than two contexts or fewer than `min_tokens` shared tokens."""
        if len(contexts) < 2:
            return None
        first, k = contexts[0], min(len(c) for c in contexts) - 1  # every context keeps >= 1 token of its own
        for ctx in contexts[1:]:
            j = 0
            while j < k and ctx[j] == first[j]:
                j += 1
            k = j
        if k < min_tokens:
            return None
        out = model(
            input_ids=torch.tensor([list(first[:k])], device=self.device), use_cache=True, **self._keep_logits(1)
        )
        self.stats.calls += 1
        self.stats.forward_tokens += k
        return k, out.past_key_values

    @torch.inference_mode()
    def _score_shared_prefix(self, model, ctx: list[int], members: list[int], pairs, results, head=None) -> None:
        """Run a long shared context once, then all its continuations against a copy of its KV cache.
        With `head` (k, cache of ctx[:k]) only the rest of the context is run, on a copy of that cache."""
        if head is not None:
            k, cache = head
            out = model(
                input_ids=torch.tensor([ctx[k:]], device=self.device),
                past_key_values=copy.deepcopy(cache),
                use_cache=True,
                **self._keep_logits(1),
            )
            ctx = ctx[k:]  # for the token count below
        else:
            out = model(input_ids=torch.tensor([ctx], device=self.device), use_cache=True, **self._keep_logits(1))
        first_logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        conts = [pairs[i][1] for i in members]
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(conts))
        width = max(len(c) for c in conts)
        pad = self.tokenizer.pad_token_id
        # Right padding after real tokens is harmless under the causal mask; no attention mask needed.
        ids = torch.tensor([c + [pad] * (width - len(c)) for c in conts], device=self.device)
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        self.stats.calls += 2
        self.stats.forward_tokens += len(ctx) + sum(len(c) for c in conts)
        for row, i in enumerate(members):
            cont = pairs[i][1]
            rows = torch.cat([first_logprobs[None], logprobs[row, : len(cont) - 1]], dim=0)
            results[i] = _score_rows(rows, cont)


@dataclass
class _Unit:
    """A context followed by some of its continuations."""

    ctx: list[int]
    conts: list[tuple[int, list[int]]]  # (pair index, continuation tokens)

    @property
    def n_scored(self) -> int:
        return sum(len(cont) for _, cont in self.conts)

    @property
    def width(self) -> int:
        return len(self.ctx) + self.n_scored


@dataclass
class _PackedRow:
    """Units side by side in one row. Per token: `segments` (a distinct label for each context and each
    continuation), `unit_ids` (which unit), `is_context`, `positions` (restarting at each unit, continuations after
    their context)."""

    units: list[_Unit]

    @property
    def n_scored(self) -> int:
        return sum(u.n_scored for u in self.units)

    @property
    def width(self) -> int:
        return sum(u.width for u in self.units)

    @property
    def tokens(self) -> list[int]:
        return [t for u in self.units for t in u.ctx + [t for _, cont in u.conts for t in cont]]

    @property
    def segments(self) -> list[int]:
        out, label = [], 0
        for u in self.units:
            out += [label] * len(u.ctx)
            for k, (_, cont) in enumerate(u.conts):
                out += [label + k + 1] * len(cont)
            label += len(u.conts) + 1
        return out

    @property
    def unit_ids(self) -> list[int]:
        return [k for k, u in enumerate(self.units) for _ in range(u.width)]

    @property
    def is_context(self) -> list[bool]:
        return [flag for u in self.units for flag in [True] * len(u.ctx) + [False] * u.n_scored]

    @property
    def positions(self) -> list[int]:
        return [
            p
            for u in self.units
            for p in list(range(len(u.ctx))) + [len(u.ctx) + j for _, cont in u.conts for j in range(len(cont))]
        ]

    def spans(self):
        """(pair index, continuation, row positions whose logits predict its tokens) per continuation."""
        start = 0
        for u in self.units:
            at = start + len(u.ctx)
            for i, cont in u.conts:
                yield i, cont, [start + len(u.ctx) - 1] + list(range(at, at + len(cont) - 1))
                at += len(cont)
            start += u.width


def _row_width(units: list[_Unit], budget: int) -> int:
    """Rows as wide as the widest unit, or 64 tokens when the units add up to that much (and the token budget allows
    it), so that short units share rows."""
    widest = max(u.width for u in units)
    return max(widest, min(64, sum(u.width for u in units), budget))


def fill_rows(units: list[_Unit], width: int) -> list[_PackedRow]:
    """Best-fit decreasing: each unit, widest first, goes into the row with the least room that still holds it."""
    rows: list[_PackedRow] = []
    room: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for unit in sorted(units, key=lambda u: -u.width):
        k = bisect.bisect_left(room, (unit.width, -1))
        if k < len(room):
            free, r = room.pop(k)
            rows[r].units.append(unit)
        else:
            free, r = width, len(rows)
            rows.append(_PackedRow([unit]))
        if free - unit.width > 0:
            bisect.insort(room, (free - unit.width, r))
    return rows


def sliding_window(config) -> int | None:
    """The attention window of a model whose layers (some or all) see only the last N positions, else None.
    A packed row's custom mask replaces the model's own masks, windows included."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    kinds = getattr(config, "layer_types", None)
    if kinds is not None:
        return getattr(config, "sliding_window", None) if any("sliding" in str(k) for k in kinds) else None
    return getattr(config, "sliding_window", None)


def _fits_window(config, pairs) -> bool:
    """Every pair spans fewer positions than the sliding window (head included), so the window changes nothing and
    a packed row, whose mask has no window, scores as the model does."""
    window = sliding_window(config)
    return window is None or all(len(ctx) + len(cont) < window for ctx, cont in pairs)


def _pack(rows: list[_PackedRow], width: int, pad: int, device, dtype, past: int = 0) -> tuple[torch.Tensor, ...]:
    """input_ids, position_ids and the additive 4D mask of right-padded packed rows after `past` cached tokens that
    every row sees. A token sees earlier tokens of its own segment and its unit's context; a pad position sees itself
    only (a query row with nothing to attend would be NaN)."""

    def padded(values, fill):
        return torch.tensor([v + [fill] * (width - len(v)) for v in values], device=device)

    ids = padded([r.tokens for r in rows], pad)
    positions = padded([r.positions for r in rows], 0) + past
    seg = padded([r.segments for r in rows], -1)
    unit = padded([r.unit_ids for r in rows], -1)
    ctx = padded([r.is_context for r in rows], False)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    same_unit_ctx = (unit[:, :, None] == unit[:, None, :]) & ctx[:, None, :]
    sees = causal & ((seg[:, :, None] == seg[:, None, :]) | same_unit_ctx) & (seg >= 0)[:, None, :]
    sees |= torch.eye(width, dtype=torch.bool, device=device) & (seg < 0)[:, :, None]
    sees = torch.cat([torch.ones(len(rows), width, past, dtype=torch.bool, device=device), sees], dim=2)
    mask = torch.zeros(sees.shape, dtype=dtype, device=device).masked_fill_(~sees, torch.finfo(dtype).min)
    return ids, positions, mask[:, None]


def _packed_logprobs(model, rows: list[_PackedRow], pad: int, device, head=None) -> torch.Tensor:
    """fp32 log-probabilities [tokens, vocab] of every continuation token of `rows`, in spans() order: the decoder
    runs on the packed rows, the output layer on the predicting positions only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    width = max(r.width for r in rows)
    past, cache = 0, None
    if head is not None:
        past, cache = head[0], copy.deepcopy(head[1])
        cache.batch_repeat_interleave(len(rows))
    ids, positions, mask = _pack(rows, width, pad, device, next(base.parameters()).dtype, past)
    hidden = base.get_decoder()(
        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=cache is not None
    ).last_hidden_state
    where = [(b, p) for b, row in enumerate(rows) for _, _, spots in row.spans() for p in spots]
    rows_at = torch.tensor([b for b, _ in where], device=hidden.device)
    picked = hidden[rows_at, torch.tensor([p for _, p in where], device=hidden.device)]
    logits = base.get_output_embeddings()(picked).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)


@torch.inference_mode()
def _probe_packing(model, device) -> bool:
    """Two continuations packed after one context, then a second unit (another context and continuation) in the same
    row, after a cached head and without one: the second continuation and the second unit's score as each does alone
    in a plain forward pass (within the dtype's rounding). Any error or mismatch: the model is not packed."""
    ctx, first, second = [11, 12, 13, 14], [15, 16, 17], [18, 19]
    other_ctx, other = [11, 12, 20], [21, 22]  # shares the head's two tokens
    dtype = next(model.parameters()).dtype
    tol = 1e-3 if dtype == torch.float32 else 0.1

    def alone(c, x):
        return model(input_ids=torch.tensor([c + x], device=device)).logits[0, -len(x) - 1 : -1].float().log_softmax(-1)

    try:
        expected = torch.cat([alone(ctx, second), alone(other_ctx, other)])
        head = (2, model(input_ids=torch.tensor([ctx[:2]], device=device), use_cache=True).past_key_values)
        for h, k in ((None, 0), (head, 2)):
            row = _PackedRow([_Unit(ctx[k:], [(0, first), (1, second)]), _Unit(other_ctx[k:], [(2, other)])])
            packed = _packed_logprobs(model, [row], 0, device, h)
            if not bool((packed[len(first) :] - expected).abs().max() < tol):
                return False
    except Exception:  # noqa: BLE001 - a model whose forward refuses 4D masks, positions or the split scores the other way
        return False
    return True


def _score_rows(rows: torch.Tensor, cont: list[int]) -> Score:
    target = torch.tensor(cont, device=rows.device)
    picked = rows.gather(1, target[:, None]).squeeze(1)
    greedy = bool((rows.argmax(dim=-1) == target).all())
    return Score(float(picked.sum()), len(cont), greedy)
