"""Proxy-tuning as an Engine: a frozen large model steered by a small tuned-minus-base delta, usable wherever an
Engine is (`fslm eval --expert-delta` scores multiple-choice options through it).

Options are scored under the distribution proxy-tuning decodes from: each continuation token's log-probability is
log_softmax(log p_large + alpha * (log p_tuned - log p_base)) at the gold token, the fused scores renormalised. The
three models are teacher-forced through `LogitsSession`s (one single-token forward per model per continuation
token), so memory stays at [rows, vocab] per model. Pairs are split and truncated exactly as the large engine's own
`score` does, so alpha = 0 (or tuned == base) gives the large model's scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from fslm.collaborate.proxy import (
    Expert,
    as_expert,
    check_models,
    fused_scores,
    load_expert,
    open_sessions,
    proxy_generate,
)
from fslm.collaborate.proxy_params import ProxyTuneParams, check_adapter_dirs, parse_expert_delta
from fslm.engine import Engine, Generation, GenerationParams, Score, load_engine
from fslm.engine.decode import fit_pairs
from fslm.errors import InputError
from fslm.models import adapter_params


class ProxyEngine:
    """An Engine over three experts (large, tuned, base): `generate` decodes from the fused scores, `score` reads
    option log-likelihoods from them. Its adapters are the experts' own; it takes none of its own."""

    def __init__(
        self,
        large: object,
        tuned: object,
        base: object,
        proxy: ProxyTuneParams = ProxyTuneParams(),
        *,
        batch_size: int = 8,
        delta: tuple[str, str] | None = None,
        adapter_dirs: Sequence[str | Path] = (),
    ):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.experts: tuple[Expert, Expert, Expert] = (
            as_expert(large, "the large model"),
            as_expert(tuned, "the tuned model"),
            as_expert(base, "the base model"),
        )
        self.vocab = check_models(*self.experts)
        self.proxy = proxy
        self.batch_size = batch_size
        self.lead = self.experts[0].engine
        self.delta = delta or (self.experts[1].name, self.experts[2].name)  # how TUNED and BASE were named
        self.model_ref = f"{self.lead.model_ref}+delta({self.delta[0]}:{self.delta[1]}, alpha={proxy.alpha:g})"
        self.context_window = min(e.engine.context_window for e in self.experts)
        self.stats = self.lead.stats  # the tuned/base engines count their own forwards in their own stats
        self._adapter_dirs = sorted({str(Path(p).resolve()) for p in adapter_dirs})

    @property
    def params(self) -> int:
        """Every model the fusion runs, each engine once, plus its adapters: the cost of one fused forward."""
        engines = {id(e.engine): e.engine for e in self.experts}
        return sum(int(e.params) for e in engines.values()) + sum(adapter_params(Path(p)) for p in self._adapter_dirs)

    def describe(self) -> dict:
        """What a run records about the fusion."""
        return {"large": self.lead.model_ref, "tuned": self.delta[0], "base": self.delta[1], "alpha": self.proxy.alpha}

    # ---- adapters: fixed by the expert delta ------------------------------------------------------------------------
    def adapters(self) -> list[str]:
        return []

    def add_adapter(self, name: str, path: str) -> None:
        raise InputError("a proxy-tuned model takes its adapters from --expert-delta TUNED:BASE (MODEL+ADAPTER_DIR)")

    def _no_adapter(self, adapter: str | None) -> None:
        if adapter is not None:
            raise InputError(f"adapter {adapter!r}: a proxy-tuned model has no adapters of its own")

    # ---- text -----------------------------------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return self.lead.render_chat(messages)

    def count_tokens(self, text: str) -> int:
        return self.lead.count_tokens(text)

    def generate(self, texts: Sequence[str], params: GenerationParams, adapter: str | None = None) -> list[Generation]:
        self._no_adapter(adapter)
        return proxy_generate(*self.experts, texts, params, self.proxy, batch_size=self.batch_size)

    # ---- scoring --------------------------------------------------------------------------------------------------
    def score(self, contexts: Sequence[str], continuations: Sequence[str], adapter: str | None = None) -> list[Score]:
        self._no_adapter(adapter)
        if len(contexts) != len(continuations):
            raise ValueError("contexts and continuations must have the same length")
        # The large engine's split, fitted to the smallest window of the three (as the engines' own score does).
        pairs = fit_pairs([self.lead.encode_pair(c, x) for c, x in zip(contexts, continuations)], self.context_window)
        # Similar context lengths share a batch: less left padding in the sessions' first forward.
        order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
        results: list[Score | None] = [None] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            scored = self._score_batch([pairs[i] for i in chunk])
            for i, (logprob, greedy) in zip(chunk, scored, strict=True):
                results[i] = Score(logprob, len(pairs[i][1]), greedy, len(continuations[i]))
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Teacher-forced fused log-likelihood and greediness of each pair's continuation. The options of one
        question share its context: each distinct context runs once per model, and its cache rows are then copied
        to every pair that continues it (`keep` with repeated indices)."""
        distinct: dict[tuple[int, ...], int] = {}
        source = [distinct.setdefault(tuple(ctx), len(distinct)) for ctx, _ in pairs]
        sessions = open_sessions(self.experts, [list(ctx) for ctx in distinct], self.vocab)
        for session in sessions:
            session.keep(source)
        device = sessions[0].logits.device
        conts = [cont for _, cont in pairs]
        logprob = [0.0] * len(pairs)
        greedy = [True] * len(pairs)
        rows = list(range(len(pairs)))  # the pair each live session row scores
        step = 0
        while True:
            fused = fused_scores(*(s.logits.to(device) for s in sessions), self.proxy.alpha, self.vocab)
            fused = torch.log_softmax(fused, dim=-1)  # renormalised: the distribution proxy-tuning samples from
            gold = torch.tensor([conts[r][step] for r in rows], dtype=torch.long, device=device)
            picked = fused.gather(1, gold[:, None]).squeeze(1).tolist()
            hits = (fused.argmax(dim=-1) == gold).tolist()
            for live, row in enumerate(rows):
                logprob[row] += picked[live]
                greedy[row] = greedy[row] and hits[live]
            keep = [live for live, row in enumerate(rows) if len(conts[row]) > step + 1]
            if not keep:
                return list(zip(logprob, greedy, strict=True))
            fed = gold[torch.tensor(keep, dtype=torch.long, device=device)]
            rows = [rows[k] for k in keep]
            for session in sessions:
                session.keep(keep)
                session.advance(fed.to(session.logits.device))
            step += 1


def load_proxy_engine(
    large_ref: str,
    expert_delta: str,
    alpha: float = 1.0,
    *,
    dtype: str = "float32",
    helper_dtype: str | None = None,
    batch_size: int = 8,
) -> ProxyEngine:
    """A ProxyEngine from `--model LARGE --expert-delta TUNED:BASE` (each MODEL[+ADAPTER_DIR]); each model loads
    once (TUNED and BASE naming one model share one engine), adapter folders are checked before any load."""
    proxy = ProxyTuneParams(alpha=alpha)
    check_adapter_dirs(expert_delta)
    pair = parse_expert_delta(expert_delta)
    engines: dict[str, Engine] = {}

    def get(ref: str, kind_dtype: str) -> Engine:
        if ref not in engines:
            engines[ref] = load_engine(ref, dtype=kind_dtype)
        return engines[ref]

    large = get(large_ref, dtype)
    tuned, base = (load_expert(ref, lambda m: get(m, helper_dtype or dtype)) for ref in pair)
    return ProxyEngine(
        large,
        tuned,
        base,
        proxy,
        batch_size=batch_size,
        delta=(str(pair[0]), str(pair[1])),
        adapter_dirs=[ref.adapter for ref in pair if ref.adapter is not None],
    )


__all__ = ["ProxyEngine", "load_proxy_engine"]
