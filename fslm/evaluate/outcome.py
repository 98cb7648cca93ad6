"""What every system under evaluation returns: one `Outcome` per item, through the `System` protocol's two calls
(`answer_choices`, `answer_generate`), so baselines and stacks are scored by identical code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fslm.engine import Engine, GenerationParams
from fslm.tasks import Item

Shots = Mapping[str, Sequence[Item]]  # item id -> few-shot examples for it


@dataclass
class Outcome:
    """What a system did for one item: its input, every stage's text, raw choice scores or a generation, costs."""

    prompt: str
    stages: dict[str, str] = field(default_factory=dict)
    choice_scores: list[float] | None = None  # summed logprob of each choice's continuation
    choice_tokens: list[int] | None = None
    choice_chars: list[int] | None = None  # lm-eval's acc_norm divisor per choice
    generation: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0


class System(Protocol):
    name: str
    engine: Engine
    load_seconds: float

    @property
    def params_touched(self) -> int: ...

    def describe(self) -> dict: ...

    def answer_choices(self, items: Sequence[Item], shots: Shots) -> list[Outcome]: ...

    def answer_generate(self, items: Sequence[Item], shots: Shots, params: GenerationParams) -> list[Outcome]: ...


def per_item_seconds(seconds: float, n: int) -> float:
    """A batched call's seconds, shared evenly by its items (each `Outcome` carries its own cost)."""
    return round(seconds / max(n, 1), 5)
