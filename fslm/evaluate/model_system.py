"""A model alone as a system under evaluation: lm-eval-style raw contexts, few-shot examples allowed."""

from __future__ import annotations

import time
from collections.abc import Sequence

from fslm.engine import Engine, GenerationParams
from fslm.evaluate.outcome import Outcome, Shots, per_item_seconds
from fslm.evaluate.prompts import model_chat_prompt
from fslm.evaluate.scoring import cut_at, norm_length
from fslm.tasks import Item, build_context, get_task


class ModelSystem:
    """A model alone on lm-eval-style raw contexts (no chat template), like lm-eval's `hf` model."""

    supports_fewshot = True

    def __init__(self, engine: Engine, name: str | None = None, load_seconds: float = 0.0, details: dict | None = None):
        self.engine = engine
        self.name = name or f"model:{engine.model_ref}"
        self.load_seconds = load_seconds
        self.details = dict(details or {})  # recorded with the run (e.g. proxy_tuning: how the model is steered)

    @property
    def params_touched(self) -> int:
        return int(self.engine.params)

    def describe(self) -> dict:
        dtype = str(getattr(self.engine, "dtype", "")) or None
        described = {"kind": "model", "model": self.engine.model_ref, "dtype": dtype, **self.details}
        return described | {"params_touched": self.params_touched}

    def answer_choices(self, items: Sequence[Item], shots: Shots) -> list[Outcome]:
        contexts, continuations = [], []
        for item in items:
            for i, cont in enumerate(item.continuations):
                contexts.append(build_context(item, shots.get(item.id, ()), choice=i if item.contexts else None))
                continuations.append(cont)
        t0 = time.perf_counter()
        scores = self.engine.score(contexts, continuations)
        seconds = per_item_seconds(time.perf_counter() - t0, len(items))
        outcomes, k = [], 0
        for item in items:
            n = len(item.continuations)
            mine, ctxs = scores[k : k + n], contexts[k : k + n]
            k += n
            shared = build_context(item, shots.get(item.id, ())) if not item.contexts else None
            tokens_in = sum(self.engine.count_tokens(c) for c in ({shared} if shared is not None else set(ctxs)))
            outcomes.append(
                Outcome(
                    prompt=shared if shared is not None else item.question,  # per-choice contexts: the blanked sentence
                    choice_scores=[s.logprob for s in mine],
                    choice_tokens=[s.n_tokens for s in mine],
                    choice_chars=[norm_length(c) for c in item.continuations],
                    tokens_in=tokens_in + sum(s.n_tokens for s in mine),
                    seconds=seconds,
                )
            )
        return outcomes

    def answer_generate(self, items: Sequence[Item], shots: Shots, params: GenerationParams) -> list[Outcome]:
        """GSM8K: lm-eval's raw context (with the few-shot examples); a free-text task's item (alpaca): its prompt as one
        user turn in the model's chat template."""
        prompts = [
            model_chat_prompt(self.engine, item)
            if get_task(item.task).free_text
            else build_context(item, shots.get(item.id, ()))
            for item in items
        ]
        gens = self.engine.generate(prompts, params)
        return [
            Outcome(
                prompt=p,
                generation=cut_at(g.text, params.stop).strip(),
                tokens_in=g.tokens_in,
                tokens_out=g.tokens_out,
                seconds=round(g.seconds, 5),
            )
            for p, g in zip(prompts, gens, strict=True)
        ]
