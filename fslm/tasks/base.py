"""Uniform evaluation items, task specs and lm-eval-style few-shot prompt assembly.

Every benchmark loader turns its own file layout into a list of :class:`Item`.
An item carries both the human-readable question/choices (for chat prompting,
display, de-duplication) and the exact strings a log-likelihood scorer needs,
following lm-evaluation-harness' default prompt for that task:

* the scored string for choice ``i`` is ``item.context_for(i) + item.continuations[i]``;
* ``context_for(i)`` is ``contexts[i]`` when ``contexts`` is non-empty (WinoGrande's
  partial evaluation, where the context differs per choice) and ``context`` otherwise.
  Scorers MUST go through ``context_for`` (or check ``contexts``) — for WinoGrande
  ``context`` is only the answer-blind sentence prefix before the blank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["multiple_choice", "generate"]


@dataclass(frozen=True)
class Item:
    """One evaluation example.

    id: stable and unique within the task (``"<task>/<source id>"`` or
        ``"<task>/<split>/<record index>"``; ids of different splits never collide).
    question: the raw question/context a person would read.
    choices: answer options as plain text; ``()`` for generation tasks.
    gold: index into ``choices`` (multiple choice; for truthfulqa_mc2 the first
        correct choice) or the final answer string (gsm8k, commas removed).
    context: lm-eval's default context for the task (shared by all choices).
    continuations: what gets scored after the context, per choice, incl. leading space.
    gold_set: truthfulqa_mc2 only: indices of every true answer.
    meta: extra string fields (``source`` = "file:line" for every item; ``subject`` and
        ``description`` for mmlu; ``solution`` = full worked answer for gsm8k; ...).
    contexts: per-choice contexts when they differ between choices (WinoGrande), else ``()``.
    """

    id: str
    task: str
    question: str
    choices: tuple[str, ...]
    gold: int | str
    context: str
    continuations: tuple[str, ...]
    gold_set: tuple[int, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    contexts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.choices:
            if len(self.continuations) != len(self.choices):
                raise ValueError(f"{self.id}: {len(self.choices)} choices but {len(self.continuations)} continuations")
            if not isinstance(self.gold, int) or not 0 <= self.gold < len(self.choices):
                raise ValueError(f"{self.id}: gold {self.gold!r} is not an index into {len(self.choices)} choices")
        if self.contexts and len(self.contexts) != len(self.choices):
            raise ValueError(f"{self.id}: {len(self.choices)} choices but {len(self.contexts)} contexts")

    def context_for(self, choice: int) -> str:
        """The context to score choice ``choice`` against (per-choice when ``contexts`` is set)."""
        return self.contexts[choice] if self.contexts else self.context

    @property
    def target(self) -> str:
        """The gold continuation as it appears in a few-shot example (incl. leading space)."""
        if self.choices:
            assert isinstance(self.gold, int)
            return self.continuations[self.gold]
        return " " + self.meta.get("solution", str(self.gold))


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: Kind
    split: str  # the split eval items come from
    fewshot_split: str | None  # a train/dev split for k-shot examples; None when the data has none
    description: str  # one line
    splits: tuple[str, ...] = ()  # every split load_task(..., split=) accepts for this task
    in_all: bool = True  # part of `--tasks all`; False: evaluated only when named (alpaca: long free-text answers)
    free_text: bool = False  # accuracy = exact match of a whole free-form answer (rarely met): read the text metrics


def _strip_description(item: Item, text: str) -> str:
    desc = item.meta.get("description", "")
    return text[len(desc) :] if desc and text.startswith(desc) else text


def _shot(item: Item) -> str:
    ctx = item.context_for(item.gold) if item.contexts and isinstance(item.gold, int) else item.context
    return _strip_description(item, ctx) + item.target


def format_fewshot(items: Sequence[Item]) -> str:
    """lm-eval style few-shot block: each example's context + gold continuation, joined by
    "\\n\\n", followed by "\\n\\n" (so the test context can be appended directly).

    Uses the gold choice's context for per-choice-context tasks (WinoGrande) and the full
    worked solution for gsm8k. A task description line (mmlu) is dropped from the examples
    so it is not repeated; use :func:`build_context` to get lm-eval's exact layout
    (description first, then the examples, then the test question). Returns "" for no items.
    """
    if not items:
        return ""
    return "\n\n".join(_shot(it) for it in items) + "\n\n"


def build_context(item: Item, shots: Sequence[Item] = (), choice: int | None = None) -> str:
    """The full context lm-eval would score: description (if any) + few-shot block + the
    item's context (for ``choice`` when the item has per-choice contexts)."""
    if item.contexts and choice is None:
        raise ValueError(f"{item.id}: this item has per-choice contexts; pass choice=")
    ctx = item.context if choice is None else item.context_for(choice)
    desc = item.meta.get("description", "")
    if not shots:
        return ctx
    return desc + format_fewshot(shots) + _strip_description(item, ctx)
