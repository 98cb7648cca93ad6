"""A request's own decoding for the ANSWER stage: sampling parameters, n choices and token streaming.

Rule (docs/serve.md): `temperature`, `top_p`, `seed`, `stop`, `max_tokens` and `n` apply to the answer stage only;
every earlier stage keeps its YAML generation settings, so the trace before the answer stays what `fslm run` gives
(reproducible and batchable). A request's `stop` strings are added to the stage's own.

How: the earlier stages run as one `Stack.run_steps(..., exclude={answer})` for the whole group (batched with other
groups at stage boundaries); then the answer stage's input is built exactly as the stack builds it
(`Stack.stage_input`) and generated here, n rows per request, streaming token by token to each request's sink. This needs a plain answer stage: one final stage, of kind generate,
without `when:`. Other stacks (an answer picked by score/vote/escalate, several final stages) run whole, their final
stages decoding under the request's settings (`Stack.with_generation`: a view, no config copy); n>1 then runs the
stack n times, and a stream gets the answer when the stack finishes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fslm.config import StackConfig, StageConfig
from fslm.engine import Generation, GenerationParams, generate_streaming
from fslm.engine.logprobs import LogprobEngine, TokenLogprob, logprobs_refusal
from fslm.errors import FslmError
from fslm.stack import Stack, StackResult, StageRecord
from fslm.stack_steps import Steps
from fslm.stages.conditions import skip_reason
from fslm.stages.records import generation_record, skipped_record
from fslm.stages.score import choices_from_prompt


@dataclass(frozen=True)
class AnswerOptions:
    """What a request asks of the answer stage (None: the stage's own setting). Hashable: the batch group key."""

    cap: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    stream: bool = False
    logprobs: int | None = None  # return token log-probabilities with this many alternatives (None: off)

    @property
    def plain(self) -> bool:
        """Nothing beyond a token cap: the request runs the stack exactly as `fslm run` does (Stack.run_steps)."""
        return self == AnswerOptions(cap=self.cap)

    def params(self, own: GenerationParams) -> GenerationParams:
        """The answer stage's params with this request's choices applied."""
        return dataclasses.replace(
            own,
            max_new_tokens=own.max_new_tokens if self.cap is None else min(self.cap, own.max_new_tokens),
            temperature=own.temperature if self.temperature is None else self.temperature,
            top_p=own.top_p if self.top_p is None else self.top_p,
            seed=own.seed if self.seed is None else self.seed,
            stop=tuple(dict.fromkeys((*own.stop, *self.stop))),
        )


def answering_stage(config: StackConfig, prompt: str) -> StageConfig | None:
    """The stage that answers `prompt` if it can be generated apart from the rest, else None (the whole stack runs).
    It must be the only final stage that runs on prompts like this one (with or without options: the default stack
    answers options with a scorer and other prompts with a generate stage), a plain generate stage whose `when:` at
    most tests the options, and read by no other stage."""
    case = "has_options" if choices_from_prompt(prompt.strip()) is not None else "no_options"
    cases = config.run_cases()
    finals = [s for s in config.final_stages if case in cases[s.name]]
    if len(finals) != 1:
        return None
    stage = finals[0]
    plain = stage.kind == "generate" and stage.when in (None, "has_options", "no_options")
    return stage if plain and not any(stage.name in s.needs for s in config.stages) else None


@dataclass
class Answered:
    """One request's outcome: the trace of choice 0 (as fslm_trace shows it) and every choice's generation."""

    result: StackResult
    choices: list[Generation]
    extra_in: int = 0  # tokens read beyond result.trace (the answer input of choices 1..n-1, or whole extra runs)
    extra_out: int = 0
    logprobs: list[list[TokenLogprob]] | None = None  # per choice, when the request asked for them


# (request index in the batch, choice index, text piece)
Sink = Callable[[int, int, str], None]
# (request index in the batch, an earlier stage's record as soon as it exists; None once they all exist)
Events = Callable[[int, StageRecord | None], None]


def run_split(
    stack: Stack,
    answer: StageConfig,
    prompts: Sequence[str],
    options: AnswerOptions,
    sink: Sink | None = None,
    on_stages: Events | None = None,
) -> Steps[list[Answered]]:
    """Earlier stages batched as `fslm run` runs them, then the answer stage under `options` (streamed to `sink`).
    `answer`: the answering_stage of every prompt. A step generator (fslm/stack_steps.py): the earlier stages' work
    is yielded, so it batches with other requests'; the answer stage is generated here, apart (it streams)."""
    cfg = stack.config
    partial = yield from stack.run_steps(prompts, exclude={answer.name}, on_record=on_stages)
    if on_stages is not None:
        for j in range(len(partial)):
            on_stages(j, None)
    index = cfg.index_of(answer.name)
    inputs: dict[int, str] = {}
    for j, result in enumerate(partial):
        records = {r.stage: r for r in result.trace}
        skipped = {r.stage for r in result.trace if r.skipped is not None}
        has_options = choices_from_prompt(result.prompt) is not None
        reason = skip_reason(answer, skipped, has_options, records)
        if reason is not None:
            result.trace.append(skipped_record(answer.name, answer.kind, reason))
        else:
            inputs[j] = stack.stage_input(index, result.prompt, result.outputs)
    made, logged = _generate(stack, answer, inputs, options, sink)
    engine = stack.engine_for(answer)
    position = {name: k for k, name in enumerate(cfg.trace_order)}
    out = []
    for j, result in enumerate(partial):
        gens = made.get(j, [])
        if gens:
            first = gens[0]
            result.trace.append(  # as Stack records it (answering_stage allows only option tests as `when`)
                generation_record(
                    answer.name, inputs[j], first, stack.adapter_for(answer), engine.model_ref, answer.when
                )
            )
            result.answer, result.answer_stage = first.text, answer.name
        result.trace.sort(key=lambda rec: position[rec.stage])
        rest = gens[1:]
        lps = logged.get(j) if options.logprobs is not None else None
        out.append(Answered(result, gens, sum(g.tokens_in for g in rest), sum(g.tokens_out for g in rest), lps))
    return out


def _generate(
    stack: Stack, answer: StageConfig, inputs: dict[int, str], options: AnswerOptions, sink: Sink | None
) -> tuple[dict[int, list[Generation]], dict[int, list[list[TokenLogprob]]]]:
    """n rows per request. Greedy: one batched call for all. Sampled: one call per request, seeded on its own, so a
    seeded request gets the same text whatever it was batched with. With options.logprobs, each choice's token
    log-probabilities too (the engine's LogprobEngine capability: checked before the request was queued)."""
    params = options.params(stack.params_for(answer))
    jobs = list(inputs)
    groups = [jobs] if params.temperature <= 0 else [[j] for j in jobs]
    made: dict[int, list[Generation]] = {j: [] for j in jobs}
    logged: dict[int, list[list[TokenLogprob]]] = {j: [] for j in jobs}
    for group in groups:
        rows = [(j, c) for j in group for c in range(options.n)]
        if not rows:
            continue
        texts = [inputs[j] for j, _ in rows]
        t0 = time.perf_counter()
        engine, adapter = stack.engine_for(answer), stack.adapter_for(answer)
        on_text = None if sink is None else (lambda r, piece, rows=rows: sink(*rows[r], piece))
        tokens: list[list[TokenLogprob]] = [[] for _ in rows]
        if options.logprobs is not None:
            if not isinstance(engine, LogprobEngine):
                raise FslmError(logprobs_refusal(engine) or "no log-probabilities")
            both = engine.generate_logprobs(texts, params, adapter, options.logprobs, on_text)
            gens, tokens = [b.generation for b in both], [b.tokens for b in both]
        elif on_text is None:
            gens = engine.generate(texts, params, adapter=adapter)
        else:
            gens = generate_streaming(engine, texts, params, adapter, on_text)
        seconds = round((time.perf_counter() - t0) / len(rows), 4)
        for (j, _), gen, toks in zip(rows, gens, tokens, strict=True):
            made[j].append(dataclasses.replace(gen, seconds=seconds))
            logged[j].append(toks)
    return made, logged


def final_variant(stack: Stack, options: AnswerOptions) -> Stack:
    """The stack with its final stages decoding under the request's settings: a view, nothing copied or loaded."""
    return stack.with_generation({s.name: options.params(stack.params_for(s)) for s in stack.config.final_stages})


def run_whole(variant: Stack, prompts: Sequence[str], n: int) -> Steps[list[Answered]]:
    """Stacks whose answer is not a plain generate stage: the whole stack n times per prompt (one batched run, as
    a step generator)."""
    results = yield from variant.run_steps([p for p in prompts for _ in range(n)])
    out = []
    for j in range(len(prompts)):
        copies = results[j * n : (j + 1) * n]
        gens = [_as_generation(r) for r in copies]
        rest = [rec for r in copies[1:] for rec in r.trace]
        out.append(Answered(copies[0], gens, sum(r.tokens_in for r in rest), sum(r.tokens_out for r in rest)))
    return out


def _as_generation(result: StackResult) -> Generation:
    rec = result.answer_record
    if rec is None:
        return Generation(result.answer, 0, 0, 0.0, "stop")
    reason = "length" if rec.finish_reason == "length" else "stop"
    return Generation(result.answer, rec.tokens_in, rec.tokens_out, rec.seconds, reason)
