"""When a stage runs, and the confidences conditions read.

A stage's `when:` is `has_options`, `no_options` or a confidence condition (`{confidence_of: pick, below: 0.3}`,
fslm/stages/kinds_config.py). A confidence is a number in [0, 1] on the record of a score stage (the choice margin:
top-1 minus top-2 option probability after a softmax over the summed log-probabilities, as `fslm cascade` computes it),
a verify stage (P(yes)) or a vote stage (the winner's share of drafts, or the margin of the averaged probabilities).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from fslm.stages.kinds_config import ConfidenceCondition
from fslm.stages.records import StageRecord


def choice_margin(scores: Sequence[float]) -> float:
    """Top-1 minus top-2 probability of a softmax over option log-probabilities (1: certain, 0: a tie); one option
    or none: 1. Also the `margin` signal of `fslm cascade calibrate` and `fslm eval calibrate`."""
    if len(scores) < 2:
        return 1.0
    top = max(scores)
    probs = sorted((math.exp(s - top) for s in scores), reverse=True)
    return (probs[0] - probs[1]) / sum(probs)


def skip_reason(stage, skipped: Collection[str], has_options: bool, records: Mapping[str, StageRecord]) -> str | None:
    """Why `stage` (a StageConfig) does not run for one prompt (None: it runs). A stage that needs a skipped stage
    (sees it, or reads its confidence or answer) is skipped too: its input would have a hole, and an adapter was never
    trained on one. `records`: this prompt's records so far, by stage."""
    dep = next((d for d in stage.needs if d in skipped), None)
    if dep is not None:
        verb = "sees" if dep in stage.sees else "reads"
        return f"{verb} {dep!r}, which was skipped"
    when = stage.when
    if when == "has_options" and not has_options:
        return "when: has_options, and the prompt has no options"
    if when == "no_options" and has_options:
        return "when: no_options, and the prompt has options"
    if isinstance(when, ConfidenceCondition):
        value = records[when.confidence_of].confidence
        if value is None:
            return f"when: stage {when.confidence_of!r} gave no confidence"
        if not when.holds(value):
            return f"when: {when.describe()}, and it is {value:.4f}"
    return None


def when_text(stage, records: Mapping[str, StageRecord]) -> str | None:
    """The condition a stage ran under, for its record: `has_options`, or 'confidence of 'pick' 0.1200 < 0.3'."""
    when = stage.when
    if isinstance(when, ConfidenceCondition):
        return when.describe(records[when.confidence_of].confidence)
    return when
