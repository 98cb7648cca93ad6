"""Pairwise preference by a judge model: which of two answers to an instruction is better, read off likelihoods.

Free-form answers have no option to score, and reference metrics (ROUGE-L, MiniLM cosine) reward wording close to
one gold text. A stronger model asked "which response is better, A or B?" is the usual complement (MT-Bench's
reference-guided pairwise mode). Here the judge does not generate: its preference is the softmax of the
log-likelihoods of the one-letter replies " A"/"B" after the chat-rendered question, so every verdict is a number
(P(first response is better)), deterministic, and costs one scored pair per letter.

Position bias (judges prefer the first or the second slot) is cancelled by asking both orders and averaging:
``preference = (P(A | x, y) + P(B | y, x)) / 2`` is the probability that x is better. `verdict` turns it into a
win / tie / loss: a win needs both orders to prefer x; orders that disagree are a tie (0.5), as in MT-Bench.
Identical answers are a tie without asking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fslm.engine import Engine

JUDGE_SYSTEM = "You are a careful, impartial judge of answers written by AI assistants."
JUDGE_TEMPLATE = (
    "Compare two responses to the instruction below. Judge which one follows the instruction better: it is correct, "
    "relevant and helpful. A reference answer written by a person is given to help you; a good response need not "
    "use the same words. Do not prefer a response because it is longer.\n\n"
    "### Instruction\n{instruction}\n\n"
    "### Reference answer\n{reference}\n\n"
    "### Response A\n{a}\n\n"
    "### Response B\n{b}\n\n"
    "Which response is better? Reply with a single letter: A or B."
)
LETTERS = ("A", "B")


@dataclass(frozen=True)
class Judgement:
    """One item's verdict on x against y: P(x better) in each order and what they add up to."""

    p_first: float  # P(x better) with x shown as Response A
    p_second: float  # P(x better) with x shown as Response B
    identical: bool = False

    @property
    def preference(self) -> float:
        """P(x better), position bias averaged out."""
        return 0.5 if self.identical else (self.p_first + self.p_second) / 2

    @property
    def verdict(self) -> float:
        """1 (both orders prefer x), 0 (both prefer y) or 0.5 (they disagree, or the answers are identical)."""
        if self.identical:
            return 0.5
        first, second = self.p_first > 0.5, self.p_second > 0.5
        if first == second:
            return 1.0 if first else 0.0
        return 0.5


def judge_prompt(engine: Engine, instruction: str, reference: str, a: str, b: str) -> str:
    """The chat-rendered question the judge reads, ending where its reply starts."""
    user = JUDGE_TEMPLATE.format(instruction=instruction.strip(), reference=reference.strip(), a=a.strip(), b=b.strip())
    return engine.render_chat([{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}])


def _p_first(la: float, lb: float) -> float:
    """softmax over the two letters' log-likelihoods: P(reply A)."""
    m = max(la, lb)
    ea, eb = math.exp(la - m), math.exp(lb - m)
    return ea / (ea + eb)


def judge_pairs(
    engine: Engine,
    instructions: Sequence[str],
    references: Sequence[str],
    xs: Sequence[str],
    ys: Sequence[str],
    *,
    batch_size: int = 8,
) -> list[Judgement]:
    """One Judgement of x against y per item, both orders asked in batched `engine.score` calls."""
    n = len(instructions)
    if not (len(references) == len(xs) == len(ys) == n):
        raise ValueError("instructions, references, xs and ys must have the same length")
    asked = [i for i in range(n) if xs[i].strip() != ys[i].strip()]
    contexts: list[str] = []
    for i in asked:
        contexts.append(judge_prompt(engine, instructions[i], references[i], xs[i], ys[i]))
        contexts.append(judge_prompt(engine, instructions[i], references[i], ys[i], xs[i]))
    letters: list[float] = []
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        ctx = [c for c in chunk for _ in LETTERS]
        cont = [letter for _ in chunk for letter in LETTERS]
        letters.extend(s.logprob for s in engine.score(ctx, cont))
    out = [Judgement(0.5, 0.5, identical=True) for _ in range(n)]
    for k, i in enumerate(asked):
        la1, lb1, la2, lb2 = letters[4 * k : 4 * k + 4]
        out[i] = Judgement(p_first=_p_first(la1, lb1), p_second=1.0 - _p_first(la2, lb2))
    return out


RATE_TEMPLATE = (
    "Rate a response to the instruction below. A reference answer written by a person is given to help you; a good "
    "response need not use the same words.\n\n"
    "### Instruction\n{instruction}\n\n"
    "### Reference answer\n{reference}\n\n"
    "### Response\n{answer}\n\n"
    "Is the response correct, relevant and helpful? Reply with a single word: Yes or No."
)
YES_NO = ("Yes", "No")


def rate_answers(
    engine: Engine,
    instructions: Sequence[str],
    references: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 8,
) -> list[float]:
    """P(Yes) that each answer is right (pointwise, reference-guided): one answer per question, so no position bias;
    comparing two systems' P(Yes) on the same items complements the pairwise verdicts."""
    if not (len(instructions) == len(references) == len(answers)):
        raise ValueError("instructions, references and answers must have the same length")
    contexts = [
        engine.render_chat(
            [
                {"role": "system", "content": JUDGE_SYSTEM},
                {
                    "role": "user",
                    "content": RATE_TEMPLATE.format(instruction=i.strip(), reference=r.strip(), answer=a.strip()),
                },
            ]
        )
        for i, r, a in zip(instructions, references, answers, strict=True)
    ]
    out: list[float] = []
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        scores = engine.score([c for c in chunk for _ in YES_NO], [w for _ in chunk for w in YES_NO])
        out.extend(_p_first(scores[2 * k].logprob, scores[2 * k + 1].logprob) for k in range(len(chunk)))
    return out
