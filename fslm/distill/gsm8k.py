"""Training targets for a calculator stack on GSM8K, built from the dataset's own calculator annotations.

GSM8K's worked solutions mark every computation as `<<48/2=24>>`. A small model cannot be trusted to compute, but it
can learn to write the computation: nesting each annotation's earlier results into the later ones turns a solution
into ONE arithmetic expression (`48/2=24`, `48+24=72` -> `48+(48/2)`), which a `tool` stage computes exactly. Each
target is kept only when the safe calculator (fslm.stages.tool) gives the gold `#### answer` from it, so a target
never teaches a wrong computation.

A number in a later annotation is replaced by the earlier expression that produced it only when the number does not
occur in the question: a number the question states is copied, a number that exists only as a result is derived.
Either way the value is the same, so this choice never changes what the expression computes.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from fslm.stages.tool import MAX_EXPRESSION_CHARS, CalcError, evaluate
from fslm.tasks.base import Item

_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>=]+)>>")
_NUMBER = re.compile(r"(?<![\d.])\d*\.?\d+(?![\d.])")
_QUESTION_NUMBER = re.compile(r"\d[\d,]*\.?\d*|\.\d+")
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Built:
    """One question's target expression, or why there is none (`reason`)."""

    expression: str | None
    reason: str | None = None


def _value(text: str) -> float | None:
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def question_numbers(question: str) -> set[float]:
    """Every number the question states (thousands separators removed)."""
    found = set()
    for match in _QUESTION_NUMBER.finditer(question):
        value = _value(match.group().rstrip(".,"))
        if value is not None:
            found.add(value)
    return found


def nest(question: str, solution: str) -> Built:
    """The solution's annotations as one expression whose value is the last annotation's; see the module doc."""
    annotations = _ANNOTATION.findall(solution)
    if not annotations:
        return Built(None, "no calculator annotation")
    given = question_numbers(question)
    derived: dict[float, str] = {}  # a result's value -> the nested expression that produced it (latest wins)
    nested = ""
    for expr, result in annotations:
        expr = expr.replace(" ", "").replace(",", "")

        def substitute(match: re.Match) -> str:
            value = float(match.group())
            if value in given or value not in derived:
                return match.group()
            return f"({derived[value]})"

        nested = _NUMBER.sub(substitute, expr)
        value = _value(result)
        if value is None:
            return Built(None, "annotation result is not a number")
        derived[value] = nested
    if len(nested) > MAX_EXPRESSION_CHARS:
        return Built(None, "expression too long")
    return Built(nested)


def verified(question: str, solution: str, gold: str) -> Built:
    """`nest`, kept only when the calculator computes `gold` (the loader's final answer) from it."""
    built = nest(question, solution)
    if built.expression is None:
        return built
    target = _value(gold)
    if target is None:
        return Built(None, "gold answer is not a number")
    try:
        value = evaluate(built.expression)
    except CalcError:
        return Built(None, "calculator refuses the expression")
    if abs(float(value) - target) > TOLERANCE * max(1.0, abs(target)):
        return Built(None, "expression does not give the gold answer")
    return built


def build_records(items: Iterable[Item], stage: str = "expression") -> tuple[list[dict], Counter]:
    """Distilled-format records (`fslm finetune --data`) for `stage` from GSM8K items (`load_task("gsm8k",
    split="train")`: the worked solution is `item.meta["solution"]`), and a count of why the others were dropped."""
    records: list[dict] = []
    dropped: Counter = Counter()
    for item in items:
        built = verified(item.question, item.meta["solution"], str(item.gold))
        if built.expression is None:
            dropped[built.reason] += 1
            continue
        records.append(
            {
                "id": hashlib.sha256(item.question.encode("utf-8")).hexdigest()[:17],
                "index": len(records),
                "prompt": item.question,
                "gold": str(item.gold),
                "hinted": False,
                "targets": {stage: built.expression},
            }
        )
    return records, dropped
