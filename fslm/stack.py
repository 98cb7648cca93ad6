"""A stack: a graph of stages that pass plain text to each other, each answer with its full trace.

Stage kinds: generate (a small LM, optionally with its LoRA adapter), retrieve (BM25 passages), score (pick one of
the prompt's options by log-likelihood), tool (a calculator), verify (P(yes) that a candidate answer is right), vote
(k sampled drafts, aggregated) and escalate (a larger model or stack below a confidence threshold). A stage runs as
soon as the texts it `sees` exist: stages run wave by wave, and every model stage of a wave is one batched engine call
over all prompts (a sampled vote draws each prompt's drafts alone: fslm/stages/vote.py). The trace keeps a readable
order (`StackConfig.trace_order`). `stage_messages` (fslm/stages/inputs.py) is THE function that
decides what a stage sees: run, distillation and fine-tuning all call it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from fslm.config import StackConfig, StageConfig, load_default_stack_config, load_stack_config
from fslm.engine import Engine, Generation, GenerationParams
from fslm.errors import InputError
from fslm.stack_cache import StageCache, cacheable
from fslm.stack_checks import check_adapters
from fslm.stack_steps import StageWork, Steps, drive, generate_work
from fslm.stages.conditions import skip_reason, when_text
from fslm.stages.endpoint_config import load_stack_engine
from fslm.stages.escalate import escalate_records, load_escalations
from fslm.stages.inputs import raw_text, stage_labels, stage_messages, stage_user_text
from fslm.stages.records import ReadyRecords, StackResult, StageRecord, generation_record, skipped_record
from fslm.stages.retrieve import NO_PASSAGE, clip, load_retrievers, passages_text, retrieve_records
from fslm.stages.score import Choices, choices_from_prompt, notes_text, score_contexts, score_records
from fslm.stages.tool import calculator
from fslm.stages.verify import verify_records
from fslm.stages.vote import score_vote_records, vote_records

__all__ = [
    "NO_PASSAGE",
    "Choices",
    "Stack",
    "StackResult",
    "StageRecord",
    "check_prompt_text",
    "clip",
    "generation_params",
    "load_retrievers",
    "passages_text",
    "retrieve_records",
    "run",
    "stage_messages",
    "stage_user_text",
]


def generation_params(stage: StageConfig) -> GenerationParams:
    """The params a stage's YAML gives it (a Stack may override them: Stack.params_for)."""
    return stage.generation


def check_prompt_text(prompt: object) -> str:
    """The prompt, stripped, if a model can be given it; InputError otherwise. Needs no model, so callers (the CLI)
    check before loading one: an empty prompt, or lone surrogates (undecodable bytes from a shell arrive as those),
    which no tokenizer or UTF-8 writer accepts."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("empty prompt: give the question or instruction to answer")
    for i, ch in enumerate(prompt):
        if "\ud800" <= ch <= "\udfff":
            raise InputError(
                f"prompt is not valid text: character {i + 1} is an undecodable byte or lone surrogate "
                f"({ch.encode('utf-8', 'backslashreplace').decode()}); pass UTF-8 text"
            )
    return prompt.strip()


class Stack:
    """A graph of stages on shared engines: one engine per distinct model (`engines`, by model reference; a stage
    on an OpenAI-compatible `endpoint:` gets the "openai" engine, fslm/engine/endpoint.py), each stage's LoRA adapter
    added to the engine of its stage's model. `engine` is the base model's."""

    def __init__(
        self,
        config: StackConfig,
        engine: Engine,
        cache: StageCache | None = None,
        *,
        engines: Mapping[str, Engine] | None = None,
        backend: str | None = None,
    ):
        self.config = config
        self.engine = engine
        self.cache = cache  # greedy stage outputs already generated (by this stack or one sharing a stage) are reused
        check_adapters(config)
        self.engines: dict[str, Engine] = {config.base_ref: engine, **(engines or {})}
        for ref in config.models:  # each model once, shared by every stage that names it
            if ref not in self.engines:
                self.engines[ref] = load_stack_engine(config, ref, backend=backend)
        self.retrievers = load_retrievers(config)
        for stage in config.stages:
            path = config.adapter_path(stage)
            if path is not None:
                self.engine_for(stage).add_adapter(stage.name, str(path))
        self.escalations = load_escalations(self, backend)  # thresholds, and the larger stacks loaded once
        self.generation: Mapping[str, GenerationParams] = {}  # per-stage decoding overrides (with_generation)

    def with_generation(self, overrides: Mapping[str, GenerationParams]) -> Stack:
        """The same stack (config, engines, adapters, cache shared; nothing copied or loaded) decoding the named
        stages with these params: how a server applies one request's sampling settings to its answer stage."""
        view = copy.copy(self)
        view.generation = {**self.generation, **overrides}
        return view

    def params_for(self, stage: StageConfig) -> GenerationParams:
        """The params `stage` decodes with: an override, else its YAML `generation:`."""
        return self.generation.get(stage.name) or generation_params(stage)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        engine: Engine | None = None,
        adapters: bool = True,
        backend: str | None = None,
    ) -> Stack:
        """A stack from a YAML file (the packaged default when path is None); adapters=False runs it prompt-only.
        backend: the inference backend for every model of the stack (default: the stack's `engine:`)."""
        cfg = load_default_stack_config() if path is None else load_stack_config(path)
        if not adapters:
            cfg = cfg.without_adapters()
        check_adapters(cfg)  # before the (slow) model load
        engine = engine or load_stack_engine(cfg, cfg.base_ref, backend=backend)
        return cls(cfg, engine, backend=backend)

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.config.stages]

    def engine_for(self, stage: StageConfig) -> Engine:
        return self.engines[self.config.stage_model(stage)]

    def adapter_for(self, stage: StageConfig) -> str | None:
        return stage.name if stage.adapter is not None else None

    def describe_models(self) -> dict[str, dict]:
        """Per model: its parameters, an estimate of its weights' memory (params x bytes per weight of the stack's
        dtype; a quantized llama.cpp file is smaller) and the stages that run on it."""
        width = 4 if self.config.dtype == "float32" else 2
        out = {}
        for ref, engine in self.engines.items():
            params = int(engine.params)
            stages = [s.name for s in self.config.stages if s.runs_model and self.config.stage_model(s) == ref]
            out[ref] = {"params": params, "weights_mb_estimate": round(params * width / 1e6, 1), "stages": stages}
        return out

    def stage_input(self, index: int, prompt: str, outputs: Mapping[str, str]) -> str:
        """The exact text stage `index` (list position) is given, after its model's chat template."""
        messages = stage_messages(self.config, index, prompt, outputs)
        engine = self.engine_for(self.config.stages[index])
        return engine.render_chat(messages) if self.config.chat_template else raw_text(messages)

    def _check_prompt(self, prompt: str) -> str:
        prompt = check_prompt_text(prompt)
        n = self.engine.count_tokens(prompt)
        if n > self.config.max_prompt_tokens:
            raise InputError(
                f"prompt has {n} tokens; this stack accepts at most {self.config.max_prompt_tokens} "
                f"(max_prompt_tokens in the stack config). Shorten it; fslm never truncates silently."
            )
        return prompt

    def run(self, prompt: str) -> StackResult:
        return self.run_batch([prompt])[0]

    def run_batch(
        self,
        prompts: Sequence[str],
        *,
        stages: int | None = None,
        decontaminate: bool = False,
        choices: Sequence[Choices | None] | None = None,
        exclude: Collection[str] = (),
        on_record: Callable[[int, StageRecord], None] | None = None,
    ) -> list[StackResult]:
        """Run every prompt through the stage graph, wave by wave (`run_steps`, which documents the arguments); the
        generate stages of a wave on one model are one `generate_mixed` call."""
        return drive(
            self.run_steps(
                prompts,
                stages=stages,
                decontaminate=decontaminate,
                choices=choices,
                exclude=exclude,
                on_record=on_record,
            )
        )

    def run_steps(
        self,
        prompts: Sequence[str],
        *,
        stages: int | None = None,
        decontaminate: bool = False,
        choices: Sequence[Choices | None] | None = None,
        exclude: Collection[str] = (),
        on_record: Callable[[int, StageRecord], None] | None = None,
    ) -> Steps[list[StackResult]]:
        """Run every prompt through the stage graph, wave by wave; the generate stages of a wave on one model are one
        `generate_mixed` call (rows of other adapters and settings batch together where the engine can).

        stages: only the first `stages` stages in trace order (a partial run has no answer). exclude: leave out these
        stages and every stage that sees them (also a partial run). choices: each prompt's options for score stages
        (None for a prompt without); by default they are parsed from the prompt text (fslm/stages/score.py).
        decontaminate: retrieve stages drop passages that share a long word run with the prompt (benchmark items
        whose ids are unknown, as in lm-eval: a passage that copies the item would hand over its answer).
        on_record(i, record): called with each record of prompt i as soon as it and every record before it in trace
        order exist (after the wave that made it), so a live viewer shows the trace in its final order.

        As a generator (`Stack.run_batch` drives it alone): it runs each wave's other stages itself, yields the wave's
        generate work and is sent its generations, so a scheduler can run many such runs' waves in one engine call
        per model (fslm/stack_steps.py: continuous batching at stage boundaries)."""
        cfg = self.config
        clean = [self._check_prompt(p) for p in prompts]
        opts = [choices_from_prompt(p) for p in clean] if choices is None else list(choices)
        if len(opts) != len(clean):
            raise ValueError(f"{len(opts)} choices for {len(clean)} prompts")
        order = cfg.trace_order
        wanted = set(order if stages is None else order[:stages])
        for name in order:  # exclusion reaches everything downstream
            if name in exclude or any(d in exclude or d not in wanted for d in cfg.sees_map[name]):
                wanted.discard(name)
        self._check_options(wanted, opts)
        results = [StackResult(p, "") for p in clean]
        ready = ReadyRecords([n for n in order if n in wanted], len(results), self._shown, on_record)
        for wave in cfg.waves():
            members = self._run_wave([cfg.stage(n) for n in wave if n in wanted], results, opts, decontaminate)
            if members:
                made = yield [StageWork(self, stage, inputs) for stage, _, inputs in members]
                self._record(members, made, results)
            ready.pass_on(results)
        position = {name: k for k, name in enumerate(order)}
        for r in results:
            r.trace.sort(key=lambda rec: position[rec.stage])
            mine = {rec.stage: rec for rec in r.trace}
            r.trace = [self._shown(rec, mine) for rec in r.trace]
        if wanted == set(order):
            finals = {s.name for s in cfg.final_stages}
            for r in results:
                ran = [rec for rec in r.trace if rec.stage in finals and rec.skipped is None]
                if ran:
                    r.answer, r.answer_stage = ran[-1].output, ran[-1].stage
        return results

    def _shown(self, rec: StageRecord, mine: Mapping[str, StageRecord]) -> StageRecord:
        """A confidence condition is recorded as the comparison that held, with its value."""
        if rec.when is None or isinstance(rec.when, str):
            return rec
        return replace(rec, when=when_text(self.config.stage(rec.stage), mine))

    def _run_wave(
        self, wave: list[StageConfig], results: list[StackResult], opts: list[Choices | None], decontaminate: bool
    ) -> list[tuple[StageConfig, list[int], list[str]]]:
        """Runs the wave's stages that are not generate stages; returns the generate ones' (stage, prompt indices,
        inputs), stages on one model next to each other (one engine call per model: generate_mixed)."""
        groups: dict[str, list[tuple[StageConfig, list[int], list[str]]]] = {}
        for stage in wave:
            active = self._active(stage, results, opts)
            if not active:
                continue
            if stage.kind == "retrieve":
                self._retrieve(stage, [results[i] for i in active], decontaminate)
            elif stage.kind == "tool":
                self._tool(stage, [results[i] for i in active])
            elif stage.kind == "score":
                self._score(stage, [results[i] for i in active], [opts[i] for i in active])  # type: ignore[misc]
            elif stage.kind in ("verify", "vote", "escalate"):
                chosen, choice = [results[i] for i in active], [opts[i] for i in active]
                if stage.kind == "verify":
                    records = verify_records(self, stage, chosen)
                elif stage.kind == "vote":
                    records = (
                        score_vote_records(self, stage, chosen, choice)
                        if stage.score
                        else vote_records(self, stage, chosen)
                    )
                else:
                    records = escalate_records(self, stage, chosen, choice)
                for result, record in zip(chosen, records, strict=True):
                    result.trace.append(replace(record, when=stage.when))
            else:
                index = self.config.index_of(stage.name)
                inputs = [self.stage_input(index, results[i].prompt, results[i].outputs) for i in active]
                # One engine call per model: stages of other adapters and settings share it (engine.generate_mixed)
                groups.setdefault(self.config.stage_model(stage), []).append((stage, active, inputs))
        return [member for members in groups.values() for member in members]

    def _check_options(self, wanted: Collection[str], opts: Sequence[Choices | None]) -> None:
        """Before anything runs: a score stage that would run on a prompt without options is an InputError."""
        cases = self.config.run_cases()
        for stage in self.config.stages:
            if (
                not self.config.scores_options(stage)
                or stage.name not in wanted
                or "no_options" not in cases[stage.name]
            ):
                continue
            missing = next((i for i, choice in enumerate(opts) if choice is None), None)
            if missing is not None:
                raise InputError(
                    f"stage {stage.name!r} of stack {self.config.name!r} picks among the prompt's options, but prompt "
                    f"{missing + 1} has none: end it with option lines 'A. ...', 'B. ...' (docs/stacks.md), or give "
                    "the stage `when: has_options` so it is skipped"
                )

    def _active(self, stage: StageConfig, results: list[StackResult], opts: list[Choices | None]) -> list[int]:
        """The prompts `stage` runs on; the others get a skipped record that says why."""
        active = []
        scores = self.config.scores_options(stage)
        for i, (result, choice) in enumerate(zip(results, opts, strict=True)):
            skipped = {r.stage for r in result.trace if r.skipped is not None}
            reason = skip_reason(stage, skipped, choice is not None, {r.stage: r for r in result.trace})
            if reason is None and scores and choice is None:  # _check_options let it through
                reason = "no options in the prompt"
            if reason is None:
                active.append(i)
            else:
                result.trace.append(skipped_record(stage.name, stage.kind, reason))
        return active

    def _record(
        self,
        members: list[tuple[StageConfig, list[int], list[str]]],
        generated: list[list[Generation]],
        results: list[StackResult],
    ) -> None:
        for (member, active, inputs), generations in zip(members, generated, strict=True):
            engine = self.engine_for(member)
            for i, text, gen in zip(active, inputs, generations, strict=True):
                results[i].trace.append(
                    generation_record(member.name, text, gen, self.adapter_for(member), engine.model_ref, member.when)
                )

    def _retrieve(self, stage: StageConfig, results: list[StackResult], decontaminate: bool = False) -> None:
        records = retrieve_records(
            self.config,
            stage,
            self.retrievers[stage.name],
            [(r.prompt, r.outputs) for r in results],
            overlap_with=[r.prompt for r in results] if decontaminate else None,
        )
        for result, record in zip(results, records, strict=True):
            result.trace.append(record)

    def _tool(self, stage: StageConfig, results: list[StackResult]) -> None:
        """The calculator on the user text the stage sees (no chat template, like a retriever's query)."""
        assert stage.tool is not None
        labels = stage_labels(self.config)
        for result in results:
            text = stage_user_text(stage, result.prompt, result.outputs, labels)
            t0 = time.perf_counter()
            output, errors = calculator(text, stage.tool.max_expressions)
            seconds = round(time.perf_counter() - t0, 4)
            result.trace.append(
                StageRecord(
                    stage.name, text, output, 0, 0, seconds, None, "tool", kind="tool", when=stage.when, errors=errors
                )
            )

    def option_contexts(self, stage: StageConfig, fmt: str, results: list[StackResult], opts: list[Choices]) -> list:
        """(contexts, continuations) per prompt for scoring `stage`'s options in `fmt`: its chat input ("chat") or
        the texts it sees as notes ahead of lm-eval's raw context ("raw"). Score and escalate stages share it."""
        index = self.config.index_of(stage.name)
        labels = stage_labels(self.config)
        return [
            score_contexts(
                fmt,
                self.stage_input(index, r.prompt, r.outputs) if fmt == "chat" else "",
                notes_text(labels, stage.sees, r.outputs) if fmt == "raw" else "",
                choice,
            )
            for r, choice in zip(results, opts, strict=True)
        ]

    def _score(self, stage: StageConfig, results: list[StackResult], opts: list[Choices]) -> None:
        """One batched `engine.score` over every option of every prompt, in the stage's format."""
        assert stage.score is not None
        fmt = stage.score.format
        scored = self.option_contexts(stage, fmt, results, opts)
        records = score_records(
            self.engine_for(stage), stage.name, self.adapter_for(stage), scored, opts, stage.when, fmt=fmt
        )
        for result, record in zip(results, records, strict=True):
            result.trace.append(record)

    def generate_stage(self, stage: StageConfig, inputs: list[str]) -> list[Generation]:
        """One batched call for the inputs the cache lacks; seconds are per item (a cached output keeps its own)."""
        return self.generate_stages([(stage, inputs)])[0]

    def generate_stages(self, work: list[tuple[StageConfig, list[str]]]) -> list[list[Generation]]:
        """`generate_stage` for several stages in one engine call per model (`generate_mixed`: rows of different
        adapters and settings batch together where the engine can); one list of Generations per stage."""
        return generate_work([StageWork(self, stage, inputs) for stage, inputs in work])

    def cache_key(self, engine: Engine, stage: StageConfig, params: GenerationParams, text: str) -> str | None:
        """The stage cache's key for one input, or None when outputs are not cached (no cache, sampled settings)."""
        if self.cache is None or not cacheable(params):
            return None
        served = self.config.stage_endpoint(stage) is not None and stage.adapter is not None
        return self.cache.key(  # a served adapter is known by its served name (its folder is the server's)
            model=engine.model_ref + (f"#{stage.name}" if served else ""),
            dtype=getattr(engine, "dtype", None),
            adapter=None if served else self.config.adapter_path(stage),
            text=text,
            params=params,
        )

    def answer_input(self, result: StackResult) -> str:
        """The answer stage's input given the other stages' trace (for scoring choices in evaluation)."""
        return self.stage_input(self.config.index_of(self.config.answer_stage.name), result.prompt, result.outputs)


def run(
    prompt: str, stack: str | Path | None = None, *, adapters: bool = True, backend: str | None = None
) -> StackResult:
    """Python twin of `fslm run`."""
    return Stack.load(stack, adapters=adapters, backend=backend).run(prompt)
