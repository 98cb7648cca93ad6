"""`fslm finetune`: LoRA-train every stage of a stack on distilled targets (see docs/distill.md)."""

from fslm.finetune.examples import Example, StageData, build_examples, pair_examples, usable_pairs, usable_records
from fslm.finetune.run import (
    FinetuneReport,
    finetune,
    finetune_pairs,
    lora_param_count,
    plot_losses,
    read_pairs,
    trained_stack_config,
)
from fslm.finetune.trainer import ALL_PROJECTIONS, TrainOptions, cpu_has_bf16, plan_batches

__all__ = [
    "ALL_PROJECTIONS",
    "Example",
    "FinetuneReport",
    "StageData",
    "TrainOptions",
    "build_examples",
    "cpu_has_bf16",
    "finetune",
    "finetune_pairs",
    "lora_param_count",
    "pair_examples",
    "plan_batches",
    "plot_losses",
    "read_pairs",
    "trained_stack_config",
    "usable_pairs",
    "usable_records",
]
