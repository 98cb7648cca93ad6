"""The `score` stage: pick among the options given in the prompt by log-likelihood, instead of generating.

Option syntax (what a person types in `fslm run`, and what `fslm eval` shows a stack): the prompt ENDS with two or
more option lines lettered from A in order, `A. text`, `A) text` or `(A) text`, optionally after a line `Options:`
(or `Choices:`). Everything before them is the question. A prompt without such a block has no options.

Two formats: "chat" scores each option's text as the stage's reply to its rendered chat input (what a chat stack's
answer stage does); "raw" scores lm-eval's raw context (`Question: ...\\nAnswer:` then ` option`), with the texts the
stage sees as labelled lines in front, as a plain language model reads a benchmark item.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fslm.engine import Engine
from fslm.stages.conditions import choice_margin
from fslm.stages.records import StageRecord

PROMPT = "prompt"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_OPTION = re.compile(r"[ \t]*(?:\(([A-Z])\)|([A-Z])[.)])[ \t]+(\S.*?)[ \t]*")
_HEADER = re.compile(r"[ \t]*(?:options|choices)[ \t]*:[ \t]*", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedOptions:
    question: str  # the prompt without its option block
    options: tuple[str, ...]


@dataclass(frozen=True)
class Choices:
    """What a score stage chooses among for one prompt. `fslm eval` builds these from a benchmark item (so the stage
    scores exactly what the model baseline scores); `choices_from_prompt` from typed text."""

    options: tuple[str, ...]  # as shown; the chosen one is the stage's text
    continuations: tuple[str, ...]  # "chat": scored as the stage's reply
    raw_contexts: tuple[str, ...]  # "raw": one context per option (without the notes)
    raw_continuations: tuple[str, ...]


def parse_options(prompt: str) -> ParsedOptions | None:
    """The trailing option block of a prompt (see the module docstring), or None when there is none."""
    lines = prompt.replace("\r\n", "\n").replace("\r", "\n").rstrip().split("\n")
    found: list[tuple[str, str]] = []
    while lines:
        m = _OPTION.fullmatch(lines[-1])
        if m is None:
            break
        found.append((m.group(1) or m.group(2), m.group(3)))
        lines.pop()
    found.reverse()
    if len(found) < 2 or "".join(letter for letter, _ in found) != LETTERS[: len(found)]:
        return None
    if lines and _HEADER.fullmatch(lines[-1]):
        lines.pop()
    return ParsedOptions("\n".join(lines).strip(), tuple(text for _, text in found))


def format_options(question: str, options: Sequence[str]) -> str:
    """The inverse of `parse_options`: a prompt in the documented syntax (what `fslm eval` shows a stack)."""
    block = "\n".join(f"{LETTERS[i]}. {o.strip()}" for i, o in enumerate(options))
    return f"{question}\n\nOptions:\n{block}" if question else f"Options:\n{block}"


def choices_from_prompt(prompt: str) -> Choices | None:
    parsed = parse_options(prompt)
    if parsed is None:
        return None
    context = f"Question: {parsed.question}\nAnswer:" if parsed.question else "Answer:"
    return Choices(
        parsed.options,
        parsed.options,
        tuple(context for _ in parsed.options),
        tuple(f" {o}" for o in parsed.options),
    )


def notes_text(labels: Mapping[str, str], sees: Sequence[str], outputs: Mapping[str, str]) -> str:
    """The texts a stage sees (not the prompt) as labelled lines ahead of a raw context."""
    lines = [f"{labels.get(name, name)}: {outputs[name].strip()}" for name in sees if name != PROMPT]
    return "\n".join(lines) + "\n\n" if lines else ""


def score_contexts(fmt: str, chat_input: str, notes: str, choices: Choices) -> tuple[list[str], tuple[str, ...]]:
    """(one context per option, the continuations scored) for one prompt."""
    if fmt == "raw":
        return [notes + c for c in choices.raw_contexts], choices.raw_continuations
    return [chat_input] * len(choices.continuations), choices.continuations


def score_records(
    engine: Engine,
    stage: str,
    adapter: str | None,
    scored: Sequence[tuple[list[str], tuple[str, ...]]],
    choices: Sequence[Choices],
    when: str | None = None,
    fmt: str | None = None,
) -> list[StageRecord]:
    """One `engine.score` call over every option of every prompt; each prompt's record carries all its options'
    scores and names the best one as its text, and its choice margin as its confidence. Seconds are the call's time
    per prompt. `fmt`: the format the contexts were built in (recorded)."""
    contexts = [c for ctxs, _ in scored for c in ctxs]
    continuations = [c for _, conts in scored for c in conts]
    t0 = time.perf_counter()
    scores = engine.score(contexts, continuations, adapter=adapter) if contexts else []
    seconds = round((time.perf_counter() - t0) / max(1, len(scored)), 4)
    records, k = [], 0
    for (ctxs, conts), choice in zip(scored, choices, strict=True):
        mine = scores[k : k + len(conts)]
        k += len(conts)
        read = sum(engine.count_tokens(c) for c in dict.fromkeys(ctxs))  # a shared chat context is read once
        logprobs = tuple(s.logprob for s in mine)
        best = max(range(len(logprobs)), key=logprobs.__getitem__)
        records.append(
            StageRecord(
                stage,
                ctxs[0],
                choice.options[best],
                read + sum(s.n_tokens for s in mine),
                0,
                seconds,
                adapter,
                "scored",
                kind="score",
                model=engine.model_ref,
                when=when,
                options=choice.options,
                option_scores=logprobs,
                option_tokens=tuple(s.n_tokens for s in mine),
                confidence=choice_margin(logprobs),
                score_format=fmt,
            )
        )
    return records
