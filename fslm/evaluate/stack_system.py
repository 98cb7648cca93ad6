"""A stack as a system under evaluation, with its adapters on or off and its answer stage in chat or raw format."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

from fslm.engine import GenerationParams
from fslm.errors import InputError
from fslm.evaluate.outcome import Outcome, Shots, per_item_seconds
from fslm.evaluate.prompts import (
    PROMPT_VERSION,
    item_choices,
    raw_notes,
    stack_continuations,
    stack_prompt,
)
from fslm.evaluate.scoring import cut_at, norm_length
from fslm.models import adapter_params
from fslm.stack import Stack
from fslm.tasks import Item, build_context

ANSWER_FORMATS = ("stack", "raw", "raw-adapter")
RAW_FORMATS = ("raw", "raw-adapter")  # the final stage reads lm-eval's raw context, not its chat prompt


class StackSystem:
    """A stack on benchmark items, prompted with `stack_prompt(item)`.

    Choice items: when the stage that answers prompts with options is a `score` stage, the whole stack runs and that
    stage's option scores are the item's choice scores (it scores `item_choices(item)`, in its own chat or raw
    format). Otherwise the stages before the answer stage generate (one batched call per stage) and the answer stage
    scores each option's text as its reply, conditioned on its rendered input (question + the texts it sees).

    answer_format "raw" replaces that answer stage by the base model alone (no adapter) scoring lm-eval's raw context,
    exactly as `ModelSystem` does, with the texts the answer stage would read as labelled lines in front: a paired
    test of whether the earlier texts help a plain scorer, free of the chat format's own effect. "raw-adapter" scores
    the same raw contexts with the answer stage's adapter on: for an answer adapter trained on raw contexts
    (`fslm.finetune.finetune_pairs`), which the chat format would run wrongly. A `score` answer stage says its format
    itself (`score.format`), so it takes answer format "stack" only."""

    supports_fewshot = False

    def __init__(
        self,
        stack: Stack,
        name: str | None = None,
        load_seconds: float = 0.0,
        adapters: bool = True,
        answer_format: str = "stack",
    ):
        if answer_format not in ANSWER_FORMATS:
            raise InputError(f"answer format {answer_format!r}: expected one of {', '.join(ANSWER_FORMATS)}")
        final = stack.config.answer_stage_for("has_options")
        if answer_format != "stack" and stack.config.scores_options(final):
            raise InputError(
                f"answer format {answer_format!r}: the answer stage {final.name!r} of stack {stack.config.name!r} is a "
                f"{final.kind} stage that scores options in its own format (chat or raw); use answer format 'stack'"
            )
        if answer_format == "raw-adapter" and stack.adapter_for(final) is None:
            raise InputError(
                f"answer format 'raw-adapter': the final stage {final.name!r} of stack {stack.config.name!r} has no "
                "adapter to score with (adapters off, or none in its config); use 'raw' for the base model"
            )
        self.stack = stack
        self.engine = stack.engine
        self.adapters = adapters
        self.answer_format = answer_format
        self.choice_stage = final  # answers items with options
        self.free_stage = stack.config.answer_stage_for("no_options")  # answers items without
        suffix = ("" if adapters else "-no-adapters") + {
            "stack": "",
            "raw": "+raw-answer",
            "raw-adapter": "+raw-adapter-answer",
        }[answer_format]
        self.name = name or f"stack:{stack.config.name}{suffix}"
        self.load_seconds = load_seconds

    @property
    def params_touched(self) -> int:
        others = sum(int(e.params) for ref, e in self.stack.engines.items() if ref != self.stack.config.base_ref)
        return int(self.engine.params) + others + sum(adapter_params(p) for p in self._adapter_paths())

    def _adapter_paths(self) -> list[Path]:
        cfg = self.stack.config
        used = [s for s in cfg.stages if not (self.answer_format == "raw" and s.name == self.choice_stage.name)]
        return [p for p in (cfg.adapter_path(s) for s in used) if p is not None]  # raw: the base model answers

    def describe(self) -> dict:
        cfg = self.stack.config
        described = {
            "kind": "stack",
            "model": cfg.base_model,
            "stack": cfg.name,
            "stack_path": str(cfg.source_path) if cfg.source_path else None,
            "stages": [s.name for s in cfg.stages],
            "adapters": {s.name: str(cfg.adapter_path(s)) for s in cfg.stages if s.adapter is not None},
            "adapters_enabled": self.adapters,
            "answer_format": self.answer_format,
            "prompt_version": PROMPT_VERSION,
            "config_sha256": self.config_sha256,
            "params_touched": self.params_touched,
        }
        if len(self.stack.engines) > 1 or any(s.kind != "generate" for s in cfg.stages if s.runs_model):
            described["models"] = self.stack.describe_models()
            described["stage_kinds"] = {s.name: s.kind for s in cfg.stages}
        if self.choice_stage.score is not None:  # how options are asked: "raw" reads lm-eval's raw context
            described["choice_format"] = self.choice_stage.score.format
        return described

    @property
    def config_sha256(self) -> str:
        """Fingerprint of the stack as run (stages, prompts, generation, adapters): resuming a run with an edited stack
        or a retrained adapter would mix two systems. Adapters count by content only (the sha256 the stage cache keys
        them by), never by path, so the same stack in another clone, or a run folder moved, keeps its fingerprint."""
        import json

        from fslm.stack_cache import adapter_digest

        cfg = self.stack.config
        data = cfg.model_dump(mode="json", exclude_none=True)
        for stage, dumped in zip(cfg.stages, data["stages"], strict=True):
            if stage.adapter is not None:
                dumped["adapter"] = {"sha256": adapter_digest(cfg.adapter_path(stage))}
        text = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _final_adapter(self, stage=None) -> str | None:
        if self.answer_format == "raw":
            return None
        return self.stack.adapter_for(stage or self.choice_stage)

    @property
    def _reads_raw(self) -> bool:
        return self.answer_format in RAW_FORMATS

    @property
    def _scores_by_stage(self) -> bool:
        return self.stack.config.scores_options(self.choice_stage)  # score, vote over scores, escalate of either

    def _scored(self, item: Item, result) -> tuple[list[str], tuple[str, ...], str]:
        """(one context per option, the options' continuations, the text recorded as the answer stage's input)."""
        cfg = self.stack.config
        if self._reads_raw:
            notes = raw_notes(cfg, result.outputs, self.choice_stage)
            contexts = [
                notes + build_context(item, (), choice=i if item.contexts else None) for i in range(len(item.choices))
            ]
            return contexts, tuple(item.continuations), contexts[0]
        text = self.stack.stage_input(cfg.index_of(self.choice_stage.name), result.prompt, result.outputs)
        conts = stack_continuations(item)
        return [text] * len(conts), conts, text

    def _run_stages(self, items: Sequence[Item], answer: str | None) -> list:
        """The stack's stages on the items' prompts: all of them (answer None) or all but stage `answer` and what
        depends on it (its input is then scored, or read raw)."""
        return self.stack.run_batch(
            [stack_prompt(item) for item in items],
            choices=[item_choices(item) for item in items],
            exclude=() if answer is None else (answer,),
        )

    def warm(self, items: Sequence[Item]) -> None:
        """Generate the stage texts that answering `items` would, without scoring or answering. With a stage cache
        shared by several processes, another process evaluating this stack on these items then reads them instead of
        generating them: two processes can split one stack's run (fslm.stack_cache)."""
        choice = [item for item in items if item.choices]
        free = [item for item in items if not item.choices]
        if choice:
            self._run_stages(choice, self.choice_stage.name)
        if free:
            self._run_stages(free, self.free_stage.name if self._reads_raw else None)

    def answer_choices(self, items: Sequence[Item], shots: Shots) -> list[Outcome]:
        if any(shots.get(item.id) for item in items):
            raise InputError("few-shot examples apply to --model systems only; evaluate stacks zero-shot")
        if self._scores_by_stage:
            return self._stage_choices(items)
        results = self._run_stages(items, self.choice_stage.name)
        scored = [self._scored(item, r) for item, r in zip(items, results, strict=True)]
        contexts = [c for ctxs, _, _ in scored for c in ctxs]
        continuations = [c for _, conts, _ in scored for c in conts]
        engine = self.stack.engine_for(self.choice_stage) if not self.answer_format == "raw" else self.engine
        t0 = time.perf_counter()
        scores = engine.score(contexts, continuations, adapter=self._final_adapter())
        seconds = per_item_seconds(time.perf_counter() - t0, len(items))
        outcomes, k = [], 0
        for result, (ctxs, conts, text) in zip(results, scored, strict=True):
            mine = scores[k : k + len(conts)]
            k += len(conts)
            trace = result.trace
            read = engine.count_tokens(text) if len(set(ctxs)) == 1 else sum(engine.count_tokens(c) for c in ctxs)
            outcomes.append(
                Outcome(
                    prompt=result.prompt,
                    stages=result.outputs,
                    choice_scores=[s.logprob for s in mine],
                    choice_tokens=[s.n_tokens for s in mine],
                    choice_chars=[norm_length(c) for c in conts],
                    tokens_in=sum(r.tokens_in for r in trace) + read + sum(s.n_tokens for s in mine),
                    tokens_out=sum(r.tokens_out for r in trace),
                    seconds=round(sum(r.seconds for r in trace) + seconds, 5),
                )
            )
        return outcomes

    def _stage_choices(self, items: Sequence[Item]) -> list[Outcome]:
        """The whole stack runs; its score stage's option scores are the choice scores (no second scoring pass)."""
        results = self._run_stages(items, None)
        outcomes = []
        for item, result in zip(items, results, strict=True):
            record = result.answer_record  # an escalate stage's: the larger system's scores, or the small ones kept
            raw = record is not None and record.score_format == "raw"
            if record is None or not record.option_scores:
                raise InputError(
                    f"item {item.id}: stack {self.stack.config.name!r} answered it with stage "
                    f"{result.answer_stage!r}, not its score stage {self.choice_stage.name!r}"
                )
            conts = tuple(item.continuations) if raw else stack_continuations(item)
            trace = result.trace
            outcomes.append(
                Outcome(
                    prompt=result.prompt,
                    stages=result.outputs,
                    choice_scores=list(record.option_scores),
                    choice_tokens=list(record.option_tokens),
                    choice_chars=[norm_length(c) for c in conts],
                    tokens_in=sum(r.tokens_in for r in trace),
                    tokens_out=sum(r.tokens_out for r in trace),
                    seconds=round(sum(r.seconds for r in trace), 5),
                )
            )
        return outcomes

    def answer_generate(self, items: Sequence[Item], shots: Shots, params: GenerationParams) -> list[Outcome]:
        """Generation tasks run the whole stack; the answer stage's own generation settings apply."""
        if any(shots.get(item.id) for item in items):
            raise InputError("few-shot examples apply to --model systems only; evaluate stacks zero-shot")
        if self._reads_raw:
            return self._raw_generate(items, params)
        results = self._run_stages(items, None)
        return [
            Outcome(
                prompt=r.prompt,
                stages=r.outputs,
                generation=r.answer,
                tokens_in=sum(s.tokens_in for s in r.trace),
                tokens_out=sum(s.tokens_out for s in r.trace),
                seconds=round(sum(s.seconds for s in r.trace), 5),
            )
            for r in results
        ]

    def _raw_generate(self, items: Sequence[Item], params: GenerationParams) -> list[Outcome]:
        """A raw answer format on a generation task: the base model (or the answer adapter: "raw-adapter") continues
        lm-eval's raw context after the notes."""
        stage = self.free_stage
        results = self._run_stages(items, stage.name)
        contexts = [
            raw_notes(self.stack.config, r.outputs, stage) + build_context(item)
            for item, r in zip(items, results, strict=True)
        ]
        engine = self.stack.engine_for(stage) if self.answer_format != "raw" else self.engine
        gens = engine.generate(contexts, params, adapter=self._final_adapter(stage))
        return [
            Outcome(
                prompt=r.prompt,
                stages=r.outputs,
                generation=cut_at(g.text, params.stop).strip(),
                tokens_in=sum(s.tokens_in for s in r.trace) + g.tokens_in,
                tokens_out=sum(s.tokens_out for s in r.trace) + g.tokens_out,
                seconds=round(sum(s.seconds for s in r.trace) + g.seconds, 5),
            )
            for r, g in zip(results, gens, strict=True)
        ]
