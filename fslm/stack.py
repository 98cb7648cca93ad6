"""A stack: small LM stages (and retrieve stages, which hand on BM25 passages) that pass plain text to each other,
each answer with its full trace.

`stage_messages` is THE function that decides what a stage sees. `Stack.run`, distillation and fine-tuning all call
it, so a stage is trained on exactly the text it receives at inference.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fslm.config import (
    PLACEHOLDER,
    PROMPT,
    StackConfig,
    StageConfig,
    check_adapters,
    load_default_stack_config,
    load_stack_config,
)
from fslm.engine import Engine, Generation, GenerationParams, load_engine
from fslm.errors import InputError
from fslm.retrieve import Hit, Retriever
from fslm.stack_cache import StageCache, cacheable

NO_PASSAGE = "(no related passage found)"


@dataclass(frozen=True)
class StageRecord:
    stage: str
    input: str  # the exact text the model was given (chat template applied)
    output: str
    tokens_in: int
    tokens_out: int
    seconds: float
    adapter: str | None = None
    finish_reason: str = "stop"  # "retrieved" for a retrieve stage
    retrieved: tuple[str, ...] = ()  # a retrieve stage's passage ids, best first


@dataclass
class StackResult:
    prompt: str
    answer: str
    trace: list[StageRecord] = field(default_factory=list)

    @property
    def outputs(self) -> dict[str, str]:
        return {r.stage: r.output for r in self.trace}

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "answer": self.answer,
            "trace": [asdict(r) for r in self.trace],
            "tokens_in": sum(r.tokens_in for r in self.trace),
            "tokens_out": sum(r.tokens_out for r in self.trace),
            "seconds": round(sum(r.seconds for r in self.trace), 4),
        }


def stage_user_text(stage: StageConfig, prompt: str, outputs: Mapping[str, str], labels: Mapping[str, str]) -> str:
    """The user message of a stage: its template filled, or one labelled block per text it sees."""
    values = {PROMPT: prompt, **outputs}
    missing = [name for name in stage.sees if name not in values]
    if missing:
        raise KeyError(f"stage {stage.name!r} needs the output of {missing} first")
    if stage.template is not None:
        # Substitute by regex, not str.format: user text may contain braces.
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], stage.template)
    blocks = []
    for name in stage.sees:
        label = "Question" if name == PROMPT else labels.get(name, name)
        blocks.append(f"{label}: {values[name]}")
    return "\n\n".join(blocks)


def stage_messages(cfg: StackConfig, index: int, prompt: str, outputs: Mapping[str, str]) -> list[dict[str, str]]:
    stage = cfg.stages[index]
    labels = {s.name: s.display_label for s in cfg.stages}
    return [
        {"role": "system", "content": stage.instruction},
        {"role": "user", "content": stage_user_text(stage, prompt, outputs, labels)},
    ]


def _raw_text(messages: Sequence[Mapping[str, str]]) -> str:
    return "\n\n".join(m["content"] for m in messages)


def clip(text: str, max_chars: int) -> str:
    """`text` cut at the last word boundary within `max_chars`, marked with ' …' (never a silent cut)."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    head = text[: max_chars - 2].rsplit(" ", 1)[0] or text[: max_chars - 2]
    return head + " …"


def passages_text(hits: Sequence[Hit], max_chars: int) -> str:
    """What a retrieve stage hands on: numbered passages, best first."""
    if not hits:
        return NO_PASSAGE
    return "\n".join(f"[{h.rank}] {clip(h.passage.text, max_chars)}" for h in hits)


def generation_params(stage: StageConfig) -> GenerationParams:
    g = stage.generation
    return GenerationParams(
        g.max_new_tokens, g.temperature, g.top_p, g.repetition_penalty, tuple(g.stop), g.seed, g.no_repeat_ngram_size
    )


def retrieve_records(
    cfg: StackConfig,
    stage: StageConfig,
    retriever: Retriever,
    inputs: Sequence[tuple[str, Mapping[str, str]]],
    avoid: Sequence[str] | None = None,
    overlap_with: Sequence[str] | None = None,
) -> list[StageRecord]:
    """A retrieve stage over (prompt, earlier texts) pairs: its query is the user text it sees (no chat template),
    its text the passages found. Distillation calls this too (with `avoid` = each record's own prompt, so a
    training record never reads its own answer), and later stages train on the passages they will read."""
    assert stage.retrieve is not None
    labels = {s.name: s.display_label for s in cfg.stages}
    queries = [stage_user_text(stage, prompt, outputs, labels) for prompt, outputs in inputs]
    t0 = time.perf_counter()
    found = retriever.search(queries, k=stage.retrieve.k, avoid=avoid, overlap_with=overlap_with)
    seconds = round((time.perf_counter() - t0) / max(1, len(queries)), 4)
    return [
        StageRecord(
            stage.name,
            query,
            passages_text(hits, stage.retrieve.max_chars),
            0,
            0,
            seconds,
            None,
            "retrieved",
            tuple(h.passage.id for h in hits),
        )
        for query, hits in zip(queries, found, strict=True)
    ]


def load_retrievers(cfg: StackConfig) -> dict[str, Retriever]:
    return {s.name: Retriever.load(cfg.index_path(s)) for s in cfg.stages if s.is_retrieval}  # type: ignore[arg-type]


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
    """N stages on one shared engine; each stage may activate its own LoRA adapter."""

    def __init__(self, config: StackConfig, engine: Engine, cache: StageCache | None = None):
        self.config = config
        self.engine = engine
        self.cache = cache  # greedy stage outputs already generated (by this stack or one sharing a stage) are reused
        check_adapters(config)
        self.retrievers = load_retrievers(config)
        for stage in config.stages:
            path = config.adapter_path(stage)
            if path is not None:
                engine.add_adapter(stage.name, str(path))

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
        backend: the inference backend for the base model (default: the stack's `engine:`)."""
        cfg = load_default_stack_config() if path is None else load_stack_config(path)
        if not adapters:
            cfg = cfg.without_adapters()
        check_adapters(cfg)  # before the (slow) model load
        return cls(cfg, engine or load_engine(cfg.base_model, dtype=cfg.dtype, backend=backend or cfg.engine))

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.config.stages]

    def adapter_for(self, stage: StageConfig) -> str | None:
        return stage.name if stage.adapter is not None else None

    def stage_input(self, index: int, prompt: str, outputs: Mapping[str, str]) -> str:
        """The exact text stage `index` is given (after the chat template)."""
        messages = stage_messages(self.config, index, prompt, outputs)
        return self.engine.render_chat(messages) if self.config.chat_template else _raw_text(messages)

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
        self, prompts: Sequence[str], *, stages: int | None = None, decontaminate: bool = False
    ) -> list[StackResult]:
        """Run every prompt through the first `stages` stages (all by default), one batched call per stage.
        decontaminate: retrieve stages drop passages that share a long word run with the prompt (benchmark items
        whose ids are unknown, as in lm-eval: a passage that copies the item would hand over its answer)."""
        clean = [self._check_prompt(p) for p in prompts]
        results = [StackResult(p, "") for p in clean]
        count = len(self.config.stages) if stages is None else stages
        for index, stage in enumerate(self.config.stages[:count]):
            if stage.is_retrieval:
                self._retrieve(stage, results, decontaminate)
                continue
            inputs = [self.stage_input(index, r.prompt, r.outputs) for r in results]
            adapter = self.adapter_for(stage)
            generations = self._generate(stage, inputs)
            for result, text, gen in zip(results, inputs, generations, strict=True):
                result.trace.append(
                    StageRecord(
                        stage.name,
                        text,
                        gen.text,
                        gen.tokens_in,
                        gen.tokens_out,
                        gen.seconds,
                        adapter,
                        gen.finish_reason,
                    )
                )
        if count == len(self.config.stages):
            for r in results:
                r.answer = r.trace[-1].output
        return results

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

    def _generate(self, stage: StageConfig, inputs: list[str]) -> list[Generation]:
        """One batched call for the inputs the cache lacks; seconds are per item (a cached output keeps its own)."""
        params = generation_params(stage)
        keys: list[str] = []
        found: dict[str, Generation] = {}
        if self.cache is not None and cacheable(params):
            dtype = getattr(self.engine, "dtype", None)
            keys = [
                self.cache.key(
                    model=self.engine.model_ref,
                    dtype=dtype,
                    adapter=self.config.adapter_path(stage),
                    text=text,
                    params=params,
                )
                for text in inputs
            ]
            found = self.cache.get_many(keys)
        todo = [i for i in range(len(inputs)) if not keys or keys[i] not in found]
        fresh: dict[int, Generation] = {}
        if todo:
            t0 = time.perf_counter()
            made = self.engine.generate([inputs[i] for i in todo], params, adapter=self.adapter_for(stage))
            elapsed = round((time.perf_counter() - t0) / len(todo), 4)
            fresh = {i: dataclasses.replace(g, seconds=elapsed) for i, g in zip(todo, made, strict=True)}
            if keys:
                self.cache.put_many({keys[i]: g for i, g in fresh.items()})
        return [fresh[i] if i in fresh else found[keys[i]] for i in range(len(inputs))]

    def answer_input(self, result: StackResult) -> str:
        """The final stage's input given the earlier stages' trace (for scoring choices in evaluation)."""
        return self.stage_input(len(self.config.stages) - 1, result.prompt, result.outputs)


def run(
    prompt: str, stack: str | Path | None = None, *, adapters: bool = True, backend: str | None = None
) -> StackResult:
    """Python twin of `fslm run`."""
    return Stack.load(stack, adapters=adapters, backend=backend).run(prompt)
