"""The `escalate` stage: hand an item to a larger system when a small stage's confidence is below a threshold.

Per prompt, the confidence of the stage `escalate.confidence_of` (a score stage's choice margin, a verify stage's
P(yes), a vote stage's agreement) is compared with the threshold:
- below (confidence < threshold): the larger system answers and its answer is the stage's text. The larger system is
  this stage on its `model:` (scoring the prompt's options when the small answer scored them, in `escalate.format` or
  the small stage's format; else generating with this stage's instruction, template and generation settings), or the
  stack in `escalate.stack`, run on the prompt (its trace is kept in `sub_trace`). One batched call for all escalated
  prompts.
- at or above: nothing runs; the stage's text is the small answer (`escalate.answer`), its option scores too.
The record says which branch ran and why (`escalated`, `confidence`, `decision`), and costs what the branch cost.

The threshold is a number, or the `threshold` of a `fslm cascade calibrate --out FILE` calibration (the cheapest
threshold keeping a target share of the larger system's accuracy on calibration items), read when the stack loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fslm.stack_checks import load_threshold
from fslm.stages.kinds_config import escalate_format
from fslm.stages.records import StageRecord, generation_record
from fslm.stages.score import score_records


@dataclass
class Escalation:
    threshold: float
    stack: object | None = None  # the larger stack (fslm.stack.Stack), or None: the stage's own model


def load_escalations(stack, backend: str | None) -> dict[str, Escalation]:
    """Per escalate stage: its threshold and, for `escalate.stack`, the larger stack, loaded once. It shares this
    stack's engine of a model when it adds no adapter to that model (adapters are named by stage)."""
    from fslm.config import load_stack_config

    cfg = stack.config
    out = {}
    for stage in cfg.stages:
        if stage.escalate is None:
            continue
        nested = None
        path = cfg.escalate_path(stage, "stack")
        if path is not None:
            sub = load_stack_config(path)
            adapted = {sub.stage_model(s) for s in sub.stages if s.adapter is not None}
            shared = {ref: e for ref, e in stack.engines.items() if ref not in adapted}
            base = shared.get(sub.base_ref)
            if base is None:
                from fslm.stages.endpoint_config import load_stack_engine

                base = load_stack_engine(sub, sub.base_ref, backend=backend)
            nested = type(stack)(sub, base, stack.cache, engines=shared, backend=backend)
        out[stage.name] = Escalation(load_threshold(cfg, stage), nested)
    return out


def escalate_records(stack, stage, results, opts) -> list[StageRecord]:
    """One record per prompt: the small answer kept, or the larger system's answer (module docstring)."""
    esc = stage.escalate
    plan = stack.escalations[stage.name]
    records: list[StageRecord | None] = [None] * len(results)
    below = []
    for i, result in enumerate(results):
        mine = {r.stage: r for r in result.trace}
        value = mine[esc.confidence_of].confidence
        if value is None or value < plan.threshold:
            below.append(i)
            continue
        small = mine[esc.answer]
        records[i] = StageRecord(
            stage.name,
            "",
            small.output,
            0,
            0,
            0.0,
            None,
            "kept",
            kind="escalate",
            options=small.options,
            option_scores=small.option_scores,
            option_tokens=small.option_tokens,
            confidence=value,
            decision=f"kept {esc.answer!r}: confidence of {esc.confidence_of!r} {value:.4f} >= threshold "
            f"{plan.threshold:g}",
            escalated=False,
            score_format=small.score_format,
        )
    if below:
        larger = _larger(stack, stage, plan, [results[i] for i in below], [opts[i] for i in below])
        for i, record in zip(below, larger, strict=True):
            value = next(r.confidence for r in results[i].trace if r.stage == esc.confidence_of)
            shown = "none" if value is None else f"{value:.4f}"
            records[i] = dataclasses.replace(
                record,
                kind="escalate",
                confidence=value,
                decision=f"escalated: confidence of {esc.confidence_of!r} {shown} < threshold {plan.threshold:g}",
                escalated=True,
            )
    return [r for r in records if r is not None]


def _larger(stack, stage, plan: Escalation, results, opts) -> list[StageRecord]:
    if plan.stack is not None:
        done = plan.stack.run_batch([r.prompt for r in results], choices=opts)
        out = []
        for sub in done:
            answer = sub.answer_record or StageRecord(stage.name, "", sub.answer, 0, 0, 0.0)
            out.append(
                StageRecord(
                    stage.name,
                    sub.prompt,
                    sub.answer,
                    sum(r.tokens_in for r in sub.trace),
                    sum(r.tokens_out for r in sub.trace),
                    round(sum(r.seconds for r in sub.trace), 4),
                    None,
                    answer.finish_reason,
                    options=answer.options,
                    option_scores=answer.option_scores,
                    option_tokens=answer.option_tokens,
                    score_format=answer.score_format,
                    sub_trace=tuple(dataclasses.asdict(r) for r in sub.trace),
                )
            )
        return out
    cfg = stack.config
    index = cfg.index_of(stage.name)
    fmt = escalate_format(cfg, stage)
    if fmt is None:
        inputs = [stack.stage_input(index, r.prompt, r.outputs) for r in results]
        engine = stack.engine_for(stage)
        return [
            generation_record(stage.name, text, gen, stack.adapter_for(stage), engine.model_ref)
            for text, gen in zip(inputs, stack.generate_stage(stage, inputs), strict=True)
        ]
    scored = stack.option_contexts(stage, fmt, results, opts)
    return score_records(stack.engine_for(stage), stage.name, stack.adapter_for(stage), scored, opts, fmt=fmt)
