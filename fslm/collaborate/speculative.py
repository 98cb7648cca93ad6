"""Speculative decoding on top of transformers' assisted generation: a cheap drafter proposes, the target verifies.

Drafters: a small model with the same tokenizer (plain ``assistant_model=``), a small model with a different tokenizer
(universal assisted generation: ``tokenizer=`` + ``assistant_tokenizer=``), or n-gram prompt lookup
(``prompt_lookup_num_tokens=``, no model at all). Under greedy decoding the target checks every drafted token, so the
output is the target's own greedy output; only the speed changes. ``AssistedEngine`` implements the Engine protocol, so
a `Stack` can run on it unchanged (that is how prompt lookup is measured inside ``Stack.run``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from fslm.engine import (
    EngineStats,
    Generation,
    GenerationParams,
    Score,
    TransformersEngine,
    require_transformers,
    same_tokenizer,
)
from fslm.engine.decode import GeneratedNoRepeatNGram, PromptOnlyRepetitionPenalty, cut_at_stop
from fslm.errors import InputError


@dataclass
class DraftStats:
    """Drafted vs accepted tokens, summed over verification steps (acceptance = accepted / drafted)."""

    drafted: int = 0
    accepted: int = 0
    steps: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def add(self, other: DraftStats) -> None:
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.steps += other.steps


@dataclass(frozen=True)
class SpecGeneration(Generation):
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_out / self.seconds if self.seconds > 0 else 0.0


@contextlib.contextmanager
def _count_drafts(model, stats: DraftStats) -> Iterator[None]:
    """Record drafted/accepted tokens per verification step.

    transformers does not report the acceptance rate, but every step ends in
    ``candidate_generator.update_candidate_strategy(input_ids, new_logits, n_matches)`` where ``new_logits`` holds
    ``drafted + 1`` positions; an instance-level wrapper of ``_get_candidate_generator`` sees each step.
    """
    original = model._get_candidate_generator

    def wrapped(*args, **kwargs):
        generator = original(*args, **kwargs)
        update = generator.update_candidate_strategy

        def counting_update(input_ids, scores, num_matches):
            stats.drafted += int(scores.shape[1]) - 1
            stats.accepted += int(num_matches)
            stats.steps += 1
            return update(input_ids, scores, num_matches)

        generator.update_candidate_strategy = counting_update
        return generator

    model._get_candidate_generator = wrapped
    try:
        yield
    finally:
        del model._get_candidate_generator


class AssistedEngine:
    """An Engine whose `generate` runs assisted generation on a target engine's transformers model (batch 1 per
    prompt); target and draft must have the TransformersEngine capability (the hf engine).

    Scoring, chat rendering and adapters are the target's own: only decoding changes.
    """

    def __init__(
        self,
        target: TransformersEngine,
        draft: TransformersEngine | None = None,
        *,
        prompt_lookup: int | None = None,
        draft_tokens: int | None = None,
        draft_confidence: float | None = None,
        ngram_size: int = 2,
    ):
        if draft is None and not prompt_lookup:
            raise InputError("speculative decoding needs a draft model or prompt_lookup > 0 (tokens copied per step)")
        if draft is not None and prompt_lookup:
            raise InputError("choose one drafter: a draft model OR prompt lookup, not both")
        if draft_tokens is not None and draft_tokens < 1:
            raise InputError(f"draft_tokens must be >= 1, got {draft_tokens}")
        self.target = require_transformers(target, "speculative decoding")
        self.draft = require_transformers(draft, "a draft model") if draft is not None else None
        self.prompt_lookup = prompt_lookup
        self.ngram_size = ngram_size
        self.universal = draft is not None and not same_tokenizer(target.tokenizer, draft.tokenizer)
        if draft is not None:
            config = draft.base_model.generation_config
            if draft_tokens is not None:
                config.num_assistant_tokens = draft_tokens
                config.num_assistant_tokens_schedule = "constant"
            if draft_confidence is not None:
                # The draft stops a round early when its own top probability drops below this (0 = never).
                config.assistant_confidence_threshold = draft_confidence
            self.draft_tokens = int(config.num_assistant_tokens or 20)  # transformers' default is 20
        else:
            self.draft_tokens = int(prompt_lookup or 0)
        self.draft_stats = DraftStats()
        # Engine protocol: everything but generation is the target's.
        self.model_ref = target.model_ref
        self.context_window = target.context_window
        self.stats: EngineStats = target.stats

    @property
    def drafter(self) -> str:
        if self.draft is None:
            return f"prompt-lookup({self.prompt_lookup})"
        return self.draft.model_ref

    @property
    def params(self) -> int:
        return self.target.params

    def add_adapter(self, name: str, path: str) -> None:
        self.target.add_adapter(name, path)

    def adapters(self) -> list[str]:
        return self.target.adapters()

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return self.target.render_chat(messages)

    def count_tokens(self, text: str) -> int:
        return self.target.count_tokens(text)

    def score(self, contexts: Sequence[str], continuations: Sequence[str], adapter: str | None = None) -> list[Score]:
        return self.target.score(contexts, continuations, adapter)

    def generate(
        self, texts: Sequence[str], params: GenerationParams, adapter: str | None = None
    ) -> list[SpecGeneration]:
        return [self._generate_one(text, params, adapter) for text in texts]

    def _assist_kwargs(self) -> dict:
        if self.draft is None:
            return {"prompt_lookup_num_tokens": self.prompt_lookup, "max_matching_ngram_size": self.ngram_size}
        kwargs: dict = {"assistant_model": self.draft.base_model}
        if self.universal:
            kwargs.update(tokenizer=self.target.tokenizer, assistant_tokenizer=self.draft.tokenizer)
        return kwargs

    @torch.inference_mode()
    def _generate_one(self, text: str, params: GenerationParams, adapter: str | None) -> SpecGeneration:
        target = self.target
        ids = target.encode(text)
        if len(ids) + params.max_new_tokens > target.context_window:
            raise InputError(
                f"input has {len(ids)} tokens; with max_new_tokens={params.max_new_tokens} it exceeds the context "
                f"window of {target.context_window} tokens of {target.model_ref}"
            )
        input_ids = torch.tensor([ids], device=target.device)
        sampling = params.temperature > 0
        if params.seed is not None:
            torch.manual_seed(params.seed)
        kwargs: dict = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=sampling,
            pad_token_id=target.tokenizer.pad_token_id,
            eos_token_id=target.eos_ids,
            **self._assist_kwargs(),
        )
        if sampling:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        # The engine's own processors (batch 1: no padding); the target applies them at every verified position.
        processors = []
        if params.repetition_penalty != 1.0:
            processors.append(PromptOnlyRepetitionPenalty(params.repetition_penalty, [0]))
        if getattr(params, "no_repeat_ngram_size", 0):
            processors.append(GeneratedNoRepeatNGram(params.no_repeat_ngram_size, len(ids)))
        if processors:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=target.tokenizer)
        stats = DraftStats()
        t0 = time.perf_counter()
        with target.hf_model(adapter) as model, _count_drafts(target.base_model, stats):
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        seconds = time.perf_counter() - t0
        self.draft_stats.add(stats)
        new = out[0, len(ids) :].tolist()
        n_out, reason = len(new), "length"
        for k, tok in enumerate(new):
            if tok in target.eos_ids:
                n_out, reason = k, "stop"
                break
        decoded = target.tokenizer.decode(new[:n_out], skip_special_tokens=True)
        cut = cut_at_stop(decoded, params.stop)
        if cut is not None:
            decoded, reason = cut, "stop"
        target.stats.calls += 1
        target.stats.forward_tokens += len(ids)
        target.stats.generated_tokens += n_out
        return SpecGeneration(decoded.strip(), len(ids), n_out, seconds, reason, stats.drafted, stats.accepted)


@dataclass
class PairReport:
    """Plain greedy vs assisted greedy of the same target on the same prompts, measured in one run."""

    target: str
    draft: str
    speedup: float
    acceptance: float
    identical: bool
    plain_tokens_per_s: float
    assisted_tokens_per_s: float
    draft_tokens: int
    prompts: int
    tokens: int
    mismatches: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def compare_with_plain(
    assisted: AssistedEngine, texts: Sequence[str], params: GenerationParams
) -> tuple[PairReport, list[Generation], list[SpecGeneration]]:
    """Time the target alone (batch 1, like the assisted path) and assisted, and check the texts are identical.

    The two run alternately per prompt, so on a shared machine both see the same background load.
    """
    plain, fast = [], []
    for text in texts:
        plain.append(assisted.target.generate([text], params)[0])
        fast.extend(assisted.generate([text], params))
    drafted = sum(g.drafted for g in fast)
    accepted = sum(g.accepted for g in fast)
    plain_s = sum(g.seconds for g in plain)
    fast_s = sum(g.seconds for g in fast)
    tokens = sum(g.tokens_out for g in plain)
    mismatches = [i for i, (a, b) in enumerate(zip(plain, fast, strict=True)) if a.text != b.text]
    report = PairReport(
        target=assisted.target.model_ref,
        draft=assisted.drafter,
        speedup=plain_s / fast_s if fast_s > 0 else 0.0,
        acceptance=accepted / drafted if drafted else 0.0,
        identical=not mismatches,
        plain_tokens_per_s=tokens / plain_s if plain_s > 0 else 0.0,
        assisted_tokens_per_s=sum(g.tokens_out for g in fast) / fast_s if fast_s > 0 else 0.0,
        draft_tokens=assisted.draft_tokens,
        prompts=len(texts),
        tokens=tokens,
        mismatches=mismatches,
    )
    return report, plain, fast
