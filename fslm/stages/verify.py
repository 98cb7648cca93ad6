"""The `verify` stage: a model's probability that a candidate answer is right (AutoMix-style self-verification).

The model reads the question (the prompt without its option block) and the candidate (the text of the stage named by
`verify.candidate`, by default the last stage the verify stage sees) and two continuations are scored, `yes` and `no`:
P(yes) = softmax(logp(yes), logp(no))[yes] = sigmoid((logp(yes) - logp(no)) / temperature). Temperature 1 is the raw
probability; a fitted temperature (temperature scaling on held-out items) calibrates it.

Formats. raw (default): the context is `Question: ...\\nProposed answer: ...\\nIs the proposed answer correct? Answer
yes or no.\\nAnswer:`, exactly what `fslm cascade signals` scores, so its signals calibrate this stage. chat: the same
question text (or the stage's `template`) as the user message under the stage's `instruction`, the continuations scored
as the reply. With a `template`, raw scores the filled template itself as the context.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from fslm.engine import Engine, Score
from fslm.stages.inputs import raw_text, stage_labels, stage_user_text
from fslm.stages.kinds_config import VERIFY_QUESTION
from fslm.stages.records import StageRecord
from fslm.stages.score import parse_options


def p_yes(logp_yes: float, logp_no: float, temperature: float = 1.0) -> float:
    """sigmoid((logp_yes - logp_no) / T), computed without overflow."""
    z = (logp_yes - logp_no) / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def yes_no_probabilities(
    engine: Engine,
    contexts: Sequence[str],
    yes: str = " yes",
    no: str = " no",
    *,
    adapter: str | None = None,
    temperature: float = 1.0,
) -> list[tuple[float, Score, Score]]:
    """(P(yes), yes score, no score) per context from ONE `engine.score` call over both continuations of every
    context: the reading every yes/no judge (this stage, the hallucination checker) shares."""
    scores = engine.score([c for c in contexts for _ in (0, 1)], [yes, no] * len(contexts), adapter=adapter)
    return [
        (p_yes(scores[2 * i].logprob, scores[2 * i + 1].logprob, temperature), scores[2 * i], scores[2 * i + 1])
        for i in range(len(contexts))
    ]


def verify_context(stack, stage, prompt: str, outputs: dict[str, str]) -> str:
    """The exact text the verify stage's yes/no continuations are scored after."""
    cfg, spec = stack.config, stage.verify
    if stage.template is not None:
        user = stage_user_text(stage, prompt, outputs, stage_labels(cfg))
    else:
        parsed = parse_options(prompt)
        question = parsed.question if parsed is not None and parsed.question else prompt
        user = VERIFY_QUESTION.format(question=question.strip(), answer=outputs[spec.candidate].strip())
    if spec.format == "raw":
        return user if stage.template is not None else user + "\nAnswer:"
    messages = [{"role": "system", "content": stage.instruction}, {"role": "user", "content": user}]
    return stack.engine_for(stage).render_chat(messages) if cfg.chat_template else raw_text(messages)


def verify_records(stack, stage, results) -> list[StageRecord]:
    """One `engine.score` call (yes and no for every prompt); each record's text is P(yes) with 4 decimals, its
    `confidence` the number, its option scores (logp(yes), logp(no))."""
    spec = stage.verify
    engine = stack.engine_for(stage)
    adapter = stack.adapter_for(stage)
    contexts = [verify_context(stack, stage, r.prompt, r.outputs) for r in results]
    t0 = time.perf_counter()
    judged = yes_no_probabilities(engine, contexts, spec.yes, spec.no, adapter=adapter, temperature=spec.temperature)
    seconds = round((time.perf_counter() - t0) / max(1, len(contexts)), 4)
    records = []
    for context, (p, yes, no) in zip(contexts, judged, strict=True):
        records.append(
            StageRecord(
                stage.name,
                context,
                f"{p:.4f}",
                engine.count_tokens(context) + yes.n_tokens + no.n_tokens,
                0,
                seconds,
                adapter,
                "scored",
                kind="verify",
                model=engine.model_ref,
                options=(spec.yes, spec.no),
                option_scores=(yes.logprob, no.logprob),
                option_tokens=(yes.n_tokens, no.n_tokens),
                confidence=p,
                score_format=spec.format,
            )
        )
    return records
