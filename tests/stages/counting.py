"""A test double for the Engine protocol."""

from __future__ import annotations


class Counting:
    """An engine seen through the Engine protocol, counting generate/score calls (and renaming its model)."""

    def __init__(self, engine, model_ref=None):
        self._engine = engine
        self.model_ref = model_ref or engine.model_ref
        self.calls: list[tuple[str, int, str | None]] = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, texts, params, adapter=None):
        self.calls.append(("generate", len(texts), adapter))
        return self._engine.generate(texts, params, adapter=adapter)

    def generate_mixed(self, rows):
        self.calls.append(("mixed", len(rows), None))
        return self._engine.generate_mixed(rows)

    def score(self, contexts, continuations, adapter=None):
        self.calls.append(("score", len(contexts), adapter))
        return self._engine.score(contexts, continuations, adapter=adapter)
