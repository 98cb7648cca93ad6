"""Scoring on the HF engine: the sum of log-probabilities of continuations, lm-eval's split and truncation.

A mixin of `HFEngine` (fslm/engine/hf.py), which provides the model, tokenizer, adapters and budgets. Three paths:
distinct contexts in length-sorted batches bounded by tokens and by logits bytes; a long context shared by several
continuations run once and its KV cache reused; and a head that every context shares (a primer, few-shot examples)
run once per call.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence

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
        flat: list[int] = []
        with self._active(adapter) as model:
            head = self._common_head(model, list(groups))
            for ctx, members in groups.items():
                cont_tokens = sum(len(pairs[i][1]) for i in members)
                if head is not None or (len(members) > 1 and len(ctx) > cont_tokens):
                    self._score_shared_prefix(model, list(ctx), members, pairs, results, head)
                else:
                    flat.extend(members)
            self._score_flat(model, flat, pairs, results)
        for i, score in enumerate(results):
            assert score is not None
            results[i] = Score(score.logprob, score.n_tokens, score.is_greedy, len(continuations[i]))
        return [r for r in results if r is not None]

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


def _score_rows(rows: torch.Tensor, cont: list[int]) -> Score:
    target = torch.tensor(cont, device=rows.device)
    picked = rows.gather(1, target[:, None]).squeeze(1)
    greedy = bool((rows.argmax(dim=-1) == target).all())
    return Score(float(picked.sum()), len(cont), greedy)
