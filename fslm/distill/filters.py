"""Quality filters for stage targets: a bad target teaches a stage a bad habit, so it is dropped and counted.

Reasons: `empty`, `too_long` (more tokens than the stage may generate at inference, or the teacher hit its limit),
`stop_string` (contains the stage's stop string, so inference could never produce it whole), `repetitive` (a loop),
`incomplete` (ends in ':' - a list the stop string cut off), `answer_leak` (the gold answer copied into an earlier
stage that must not give it away; words it shares with the prompt do not count).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def is_repetitive(text: str, n: int = 4, max_repeat_share: float = 0.4) -> bool:
    """A loop: many of the text's word n-grams are repeats, or one line/sentence occurs 3+ times."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if len(grams) >= 8 and 1 - len(set(grams)) / len(grams) > max_repeat_share:
        return True
    parts = [p.strip().lower() for p in re.split(r"[\n.!?]+", text) if len(p.strip()) > 10]
    return any(parts.count(p) >= 3 for p in set(parts))


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def leaks_answer(answer: str, text: str, prompt: str = "", min_words: int = 3, span: int = 8) -> bool:
    """A verbatim run of min(`span`, its length) words of the gold answer appears in `text`, and not in `prompt`.

    Answers shorter than `min_words` words are not checked: a one-word answer like "Paris" is also a key term. Runs
    the prompt also contains do not count: golds often restate the question ("The seven colours of the rainbow are
    ..."), and a stage that restates the question in the same words gives nothing away.
    """
    gold = words(answer)
    if len(gold) < min_words:
        return False
    n = min(span, len(gold))
    return bool((_ngrams(gold, n) & _ngrams(words(text), n)) - _ngrams(words(prompt), n))


SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*(?=\s|$)")


def trim_to_sentences(text: str, max_tokens: int, count_tokens: Callable[[str], int], min_words: int = 6) -> str | None:
    """The longest run of whole leading sentences of `text` that fits `max_tokens`, or None if that would leave
    fewer than `min_words` words. A teacher that ran past the stage's budget often wrote one or two good sentences
    first: keeping them teaches the stage to stop early, where dropping the record teaches nothing."""
    best = None
    for match in SENTENCE_END.finditer(text):
        head = text[: match.end()].rstrip()
        if count_tokens(head) > max_tokens:
            break
        best = head
    return best if best is not None and len(words(best)) >= min_words else None


def check_target(
    text: str,
    *,
    finish_reason: str = "stop",
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    stop: Sequence[str] = (),
    answer: str | None = None,
    prompt: str = "",
) -> list[str]:
    """Reasons to drop one stage target (empty list: keep it). `answer` is given only where leaks are forbidden."""
    if not text.strip():
        return ["empty"]
    reasons = []
    if finish_reason == "length" or (
        max_tokens is not None and count_tokens is not None and count_tokens(text) > max_tokens
    ):
        reasons.append("too_long")
    if any(s and s in text for s in stop):
        reasons.append("stop_string")
    if text.rstrip().endswith(":"):
        reasons.append("incomplete")
    if is_repetitive(text):
        reasons.append("repetitive")
    if answer is not None and leaks_answer(answer, text, prompt):
        reasons.append("answer_leak")
    return reasons
