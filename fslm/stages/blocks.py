"""The YAML blocks inside a stage: its generation settings and the block that makes it a retrieve, score or tool
stage. Plain pydantic models with no imports from the rest of fslm, so the stack config (fslm.config) builds on them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(64, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=5.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, ge=1.0, le=3.0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    no_repeat_ngram_size: int = Field(
        0, ge=0, le=64, description="ban repeating an n-gram of the generated text (0 = off)"
    )


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


__all__ = ["GenerationConfig", "RetrieveConfig", "ScoreConfig", "ToolConfig"]
