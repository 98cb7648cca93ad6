"""Per-item metrics, exactly as lm-evaluation-harness defines them.

Pure functions on numbers and strings (no model), so the built-in runner, the lm-eval task hooks and any later
cascade/router code compute the same acc / acc_norm / mc2 / exact-match from the same raw scores.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np

from fslm.tasks import Item, get_task, normalize_text

# Tasks for which lm-eval reports acc_norm (its default YAMLs); for the others acc_norm is null.
ACC_NORM_TASKS = frozenset({"arc_easy", "arc_challenge", "hellaswag", "piqa", "openbookqa"})
# The metric each task's "acc" column holds.
METRIC_NAMES = {"truthfulqa_mc2": "mc2", "gsm8k": "exact_match", "alpaca": "exact_match"}


def metric_name(task: str) -> str:
    return METRIC_NAMES.get(task, "acc")


def norm_length(continuation: str) -> int:
    """lm-eval's acc_norm divisor: len(choice) WITHOUT the target delimiter (the one leading space)."""
    return max(len(continuation.removeprefix(" ")), 1)


@dataclass(frozen=True)
class MCResult:
    prediction: int  # argmax of the raw summed logprobs
    prediction_norm: int  # argmax of logprob / len(choice chars)
    correct: bool  # prediction is (one of) the gold answer(s)
    acc: float  # 0/1, or the mc2 probability mass on the true answers
    acc_norm: float | None  # 0/1 for tasks where lm-eval reports it, else None


def mc2_mass(scores: Sequence[float], gold_set: Sequence[int]) -> float:
    """TruthfulQA mc2: probability mass on the true answers, normalised over all answers (stable softmax)."""
    arr = np.asarray(scores, dtype=np.float64)
    top = arr.max()
    probs = np.exp(arr - top)
    return float(probs[list(gold_set)].sum() / probs.sum())


def score_choices(item: Item, scores: Sequence[float], lengths: Sequence[int]) -> MCResult:
    """acc / acc_norm (or mc2) of one multiple-choice item from raw summed logprobs and choice lengths."""
    if len(scores) != len(item.choices) or len(lengths) != len(item.choices):
        raise ValueError(f"{item.id}: {len(item.choices)} choices but {len(scores)} scores / {len(lengths)} lengths")
    arr = np.asarray(scores, dtype=np.float64)
    pred = int(np.argmax(arr))  # first maximum on ties, as lm-eval
    pred_norm = int(np.argmax(arr / np.asarray(lengths, dtype=np.float64)))
    gold = set(item.gold_set) if item.gold_set else {int(item.gold)}
    correct = pred in gold
    if item.task == "truthfulqa_mc2":
        return MCResult(pred, pred_norm, correct, mc2_mass(arr, sorted(gold)), None)
    acc_norm = float(pred_norm in gold) if item.task in ACC_NORM_TASKS else None
    return MCResult(pred, pred_norm, correct, float(correct), acc_norm)


# --- GSM8K ----------------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?[$]?\d[\d,]*(?:\.\d+)?")
_STRICT = re.compile(r"####\s*(-?[$]?\d[\d,]*(?:\.\d+)?)")


def extract_number(text: str) -> str | None:
    """The model's final answer: the number after '####' when present, else the last number in the text
    (lm-eval's strict-match, falling back to its flexible-extract), with '$' and thousands commas removed."""
    strict = _STRICT.search(text)
    found = strict.group(1) if strict else (_NUMBER.findall(text) or [None])[-1]
    if found is None:
        return None
    return found.replace("$", "").replace(",", "").rstrip(".")


def numbers_match(predicted: str | None, gold: str) -> bool:
    """Exact match of two numbers by value ('18.00' == '18'); non-numbers compare as stripped strings."""
    if predicted is None:
        return False
    try:
        a, b = Decimal(predicted), Decimal(gold.replace(",", "").replace("$", ""))
    except InvalidOperation:
        return predicted.strip() == gold.strip()
    return a.is_finite() and b.is_finite() and a == b


def generation_verdict(item: Item, generation: str) -> tuple[str | None, bool]:
    """(prediction, correct) of a generation item: GSM8K's final number by value; a free-text task's whole answer,
    equal to the gold text with whitespace and case aside (rarely true: its text metrics are what measure it)."""
    if get_task(item.task).free_text:
        text = generation.strip()
        return text, bool(text) and normalize_text(text) == normalize_text(str(item.gold))
    predicted = extract_number(generation)
    return predicted, numbers_match(predicted, str(item.gold))


def cut_at(text: str, stops: Sequence[str]) -> str:
    """Text up to the first stop string (generation engines may run a few tokens past it)."""
    cuts = [text.find(s) for s in stops if s and s in text]
    return text[: min(cuts)] if cuts else text


def safe_float(value: float) -> float | None:
    """JSON has no NaN/inf: store them as null."""
    return value if math.isfinite(value) else None
