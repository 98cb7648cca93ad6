"""The YAML blocks inside a stage that make it a retrieve, score or tool stage (its `generation:` block is
fslm.generation.GenerationParams). Plain pydantic models with no imports from the rest of fslm, so the stack config
(fslm.config) builds on them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RetrieveConfig(BaseModel):
    """A stage that reads passages instead of generating: its text is the k best BM25 hits for its input."""

    model_config = ConfigDict(extra="forbid")

    index: str = Field(
        ..., min_length=1, description="folder written by `fslm retrieve index`, relative to the stack file"
    )
    k: int = Field(3, ge=1, le=20, description="passages per query")
    max_chars: int = Field(400, ge=20, le=4000, description="a longer passage is cut at a word and ends with ' …'")


class ScoreConfig(BaseModel):
    """A stage that picks among the options given in the prompt by log-likelihood instead of generating
    (fslm/stages/score.py documents the option syntax). Its text is the chosen option."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["chat", "raw"] = Field(
        "chat",
        description="chat: each option is scored as the stage's reply to its chat input; raw: lm-eval's raw context "
        "('Question: ...\\nAnswer:' + ' option'), with the texts the stage sees as labelled lines in front",
    )


class ToolConfig(BaseModel):
    """A stage that runs a tool on the text it sees instead of a model. Only the calculator exists."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["calculator"] = "calculator"
    max_expressions: int = Field(16, ge=1, le=256, description="expressions computed per input, first ones first")


__all__ = ["RetrieveConfig", "ScoreConfig", "ToolConfig"]
