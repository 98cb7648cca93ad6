"""Prefix reuse: the fixed head of a stage's input (chat template, system instruction, template text) is computed
once and its KV state reused for every later row and request that starts with it.

A stage's inputs differ only after the fixed part, so the engine does not need to be told where it ends: the shared
head of a batch's rows (or, for a batch of one, of this row and the previous row under the same adapter) IS the fixed
part. This module holds the engine-independent half: which token prefix to use for a batch, and a store of prefix
states bounded by their total token count (least recently used out first). The engine computes and applies the states.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with."""
    if not rows:
        return 0
    first, n = rows[0], min(len(r) for r in rows)
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
    return n


@dataclass
class PrefixStats:
    hits: int = 0  # batches that reused a stored prefix state
    stored: int = 0  # prefix states computed and stored
    reused_tokens: int = 0  # prompt tokens not recomputed thanks to a hit (summed over rows)


class PrefixStore:
    """Prefix states keyed by (adapter, token tuple), at most `budget_tokens` tokens in all."""

    def __init__(self, budget_tokens: int = 2048, min_tokens: int = 16):
        self.budget_tokens = budget_tokens
        self.min_tokens = min_tokens
        self.stats = PrefixStats()
        self._states: OrderedDict[tuple[str | None, tuple[int, ...]], Any] = OrderedDict()
        self._last_row: dict[str | None, tuple[int, ...]] = {}
        self.last_hit = False  # whether the latest lookup reused a stored state (rather than computing one)

    @property
    def enabled(self) -> bool:
        return self.budget_tokens >= self.min_tokens > 0

    def tokens(self) -> int:
        return sum(len(key[1]) for key in self._states)

    def clear(self) -> None:
        self._states.clear()
        self._last_row.clear()

    def lookup(
        self, rows: Sequence[Sequence[int]], adapter: str | None, compute: Callable[[list[int]], Any]
    ) -> tuple[int, Any] | None:
        """(k, state of the first k tokens) to start `rows` from, or None. Every row keeps at least one token of its
        own (the model must run on something to give next-token logits). A stored prefix all rows start with is
        reused (the longest one); otherwise the rows' shared head (or, for one row, its shared head with the previous
        row under this adapter) is computed by `compute(tokens)` and stored when it is at least `min_tokens` long."""
        self.last_hit = False
        if not self.enabled or not rows:
            return None
        limit = min(len(r) for r in rows) - 1
        best: tuple[str | None, tuple[int, ...]] | None = None
        for key in self._states:
            n = len(key[1])
            if key[0] == adapter and n <= limit and (best is None or n > len(best[1])):
                if all(tuple(r[:n]) == key[1] for r in rows):
                    best = key
        previous = self._last_row.get(adapter)
        self._last_row[adapter] = tuple(rows[0])
        if best is not None:
            self._states.move_to_end(best)
            self.last_hit = True
            self.stats.hits += 1
            self.stats.reused_tokens += len(best[1]) * len(rows)
            return len(best[1]), self._states[best]
        head = list(rows) if len(rows) > 1 else [rows[0], previous] if previous is not None else []
        k = min(common_prefix_length(head), limit) if head else 0
        if k < self.min_tokens or k > self.budget_tokens:
            return None
        key = (adapter, tuple(rows[0][:k]))
        self._states[key] = state = compute(list(key[1]))
        self.stats.stored += 1
        while self.tokens() > self.budget_tokens:
            self._states.popitem(last=False)
        return k, state


def count_reuse(stats, prefix: tuple[int, Any] | None, rows: int, hit: bool) -> int:
    """Book a generate batch's prefix use into an engine's stats; returns the prompt tokens the batch did not run (a
    computed head ran once, in the engine's state function, and counts there)."""
    if prefix is None:
        return 0
    skipped = prefix[0] * rows
    stats.prefix_hits += hit
    stats.prefix_tokens_reused += skipped - (0 if hit else prefix[0])
    return skipped
