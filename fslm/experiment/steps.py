"""Training steps of an experiment spec: one of distill, finetune, finetune_pairs per named step."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DistillStep(_Strict):
    """`fslm.distill.distill`: a teacher writes every stage's target text (output: train/<step>/distilled.jsonl)."""

    stack: str = Field("default", description="'default' or a stack YAML path: the stages to write targets for")
    data: str | None = Field(None, description="instruction data (JSON/JSONL); default: the shared Alpaca sample")
    limit: int | None = Field(None, ge=1, description="first N unique records")
    teacher: str | None = Field(None, description="teacher model reference (default: the stack's base model)")
    batch_size: int = Field(8, ge=1, le=256)
    hints: bool = Field(True, description="show the teacher the gold output (answer-hinted distillation)")


class FinetuneStep(_Strict):
    """`fslm.finetune.finetune`: one LoRA adapter per stage (output: train/<step>/stack.yaml + adapters/)."""

    stack: str = Field("default", description="'default', a stack YAML path, or another finetune step's name")
    data: str = Field(..., description="a distill step of this spec, or a distilled JSONL path")
    stages: list[str] | None = Field(None, description="train only these stages (default: every model stage)")
    options: dict[str, Any] = Field(default_factory=dict, description="fslm.finetune.TrainOptions fields")

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return _train_options(options)


class PairsStep(_Strict):
    """`fslm.finetune.finetune_pairs`: one stage trained on {id, context, continuation} pairs."""

    stack: str = Field("default", description="'default', a stack YAML path, or a finetune step's name")
    stage: str = Field(..., min_length=1)
    pairs: str = Field(..., min_length=1, description="pairs JSONL path")
    options: dict[str, Any] = Field(default_factory=dict, description="fslm.finetune.TrainOptions fields")

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return _train_options(options)


def _train_options(options: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import fields

    from fslm.finetune.trainer import TrainOptions

    known = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; TrainOptions has {sorted(known)}")
    return options


class TrainingStep(_Strict):
    distill: DistillStep | None = None
    finetune: FinetuneStep | None = None
    finetune_pairs: PairsStep | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TrainingStep:
        given = [k for k in ("distill", "finetune", "finetune_pairs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of distill, finetune, finetune_pairs (got {', '.join(given) or 'none'})"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("distill", "finetune", "finetune_pairs") if getattr(self, k) is not None)

    @property
    def body(self) -> DistillStep | FinetuneStep | PairsStep:
        return getattr(self, self.kind)
