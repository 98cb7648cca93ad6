"""`fslm finetune`: LoRA-train every stage of a stack on distilled targets (see docs/distill.md)."""

from fslm.finetune.examples import Example, StageData, build_examples, usable_records
from fslm.finetune.run import FinetuneReport, finetune, lora_param_count, plot_losses, trained_stack_config
from fslm.finetune.trainer import ALL_PROJECTIONS, TrainOptions, cpu_has_bf16, plan_batches

__all__ = [
    "ALL_PROJECTIONS", "Example", "FinetuneReport", "StageData", "TrainOptions", "build_examples", "cpu_has_bf16",
    "finetune", "lora_param_count", "plan_batches", "plot_losses", "trained_stack_config", "usable_records",
]
