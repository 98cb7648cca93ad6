"""How a stage decodes: THE generation-params type, for a stack's YAML `generation:` blocks and every engine call.

A pydantic dataclass: YAML blocks are validated (ranges, unknown keys refused, a `stop` list becomes a tuple), and the
value is frozen and hashable, so batches group stages by it and caches key on it. A leaf module: config, engines and
everything above them import it without importing one another.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class GenerationParams:
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 64
    temperature: Annotated[float, Field(ge=0.0, le=5.0)] = 0.0  # 0 = greedy
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    repetition_penalty: Annotated[float, Field(ge=1.0, le=3.0)] = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    no_repeat_ngram_size: Annotated[
        int, Field(ge=0, le=64, description="ban repeating an n-gram of the generated text (0 = off)")
    ] = 0  # counts generated tokens only
