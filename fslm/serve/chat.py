"""How chat messages become a stack prompt, and how a stack result becomes a trace record.

Mapping (documented in docs/serve.md): the LAST message must be a user message; it is the question. Earlier user and
assistant turns are prepended as a short transcript so follow-up questions keep their context. System, developer
and tool messages are ignored: every stage already has its own system instruction from the stack config.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from fslm.serve.answer import Answered
from fslm.serve.batching import Job
from fslm.serve.schemas import APIError, ChatMessage
from fslm.stack import StackResult

HISTORY_HEADER = "Earlier conversation:"
CURRENT_HEADER = "Current request:"


def messages_to_prompt(messages: list[ChatMessage]) -> str:
    last_index = len(messages) - 1
    last = messages[last_index]
    if last.role != "user":
        raise APIError(
            400,
            f"messages[{last_index}] has role {last.role!r}; the last message must be the user's question (role 'user')",
            param=f"messages.{last_index}.role",
            code="invalid_value",
        )
    question = last.text(last_index).strip()
    if not question:
        raise APIError(
            400,
            f"messages[{last_index}].content is empty: give the question to answer",
            param=f"messages.{last_index}.content",
            code="empty_prompt",
        )
    history = []
    for i, message in enumerate(messages[:last_index]):
        if message.role in ("user", "assistant"):
            text = message.text(i).strip()
            if text:
                history.append(f"{message.role.capitalize()}: {text}")
    if not history:
        return question
    return "\n".join([HISTORY_HEADER, *history, "", CURRENT_HEADER, question])


def usage(result: StackResult, answered: Answered | None = None) -> dict[str, int]:
    """Tokens over ALL stages: what the answer cost, not just the final stage's text. prompt_tokens = every token a
    stage read (its whole input, chat template included), completion_tokens = every token a stage generated; with
    n > 1 the answer stage's input and output count once per choice."""
    extra_in, extra_out = (answered.extra_in, answered.extra_out) if answered is not None else (0, 0)
    prompt_tokens = sum(r.tokens_in for r in result.trace) + extra_in
    completion_tokens = sum(r.tokens_out for r in result.trace) + extra_out
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def cost(result: StackResult, answered: Answered | None = None) -> dict:
    """`fslm_cost`: seconds and tokens per stage (this request's share of each batched call) and their totals; the
    answer stage's row covers all n choices."""
    choices = answered.choices if answered is not None else []
    stages = []
    for r in result.trace:
        row = {"stage": r.stage, "seconds": r.seconds, "tokens_in": r.tokens_in, "tokens_out": r.tokens_out}
        if r.stage == result.answer_stage and len(choices) > 1:
            row["seconds"] = round(sum(g.seconds for g in choices), 4)
            row["tokens_in"] = sum(g.tokens_in for g in choices)
            row["tokens_out"] = sum(g.tokens_out for g in choices)
        stages.append(row)
    return {
        "stages": stages,
        "seconds": round(sum(s["seconds"] for s in stages), 4),
        "tokens_in": sum(s["tokens_in"] for s in stages),
        "tokens_out": sum(s["tokens_out"] for s in stages),
    }


def trace_record(cid: str, model: str, result: StackResult, job: Job, latency: float) -> dict:
    stages = [asdict(r) for r in result.trace]
    return {
        "id": cid,
        "created": time.time(),
        "model": model,
        "prompt": result.prompt,
        "answer": result.answer,
        # OpenAI's values: "length" when the answering stage hit its token limit, else "stop" (a scored, retrieved or
        # tool answer ended by itself)
        "finish_reason": "length"
        if result.answer_record is not None and result.answer_record.finish_reason == "length"
        else "stop",
        "stages": stages,
        "tokens_in": sum(s["tokens_in"] for s in stages),
        "tokens_out": sum(s["tokens_out"] for s in stages),
        "batch_size": job.batch_size,
        "queue_seconds": round(max(job.started - job.enqueued, 0.0), 4),
        "stack_seconds": round(max(job.finished - job.started, 0.0), 4),
        "latency_seconds": round(latency, 4),
    }
