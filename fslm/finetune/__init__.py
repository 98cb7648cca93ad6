"""`fslm finetune`: LoRA-train every stage of a stack on distilled targets (see docs/distill.md).

The options and their choices import without torch (`fslm.finetune.options`), so the CLI checks what was typed before
anything heavy loads; the training names below are imported on first use."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fslm.finetune.options import ALL_PROJECTIONS, KD_LEVELS, PRECISIONS, SAVE_DTYPES, TrainOptions

if TYPE_CHECKING:
    from fslm.finetune.choice_kd import finetune_choice_kd
    from fslm.finetune.examples import (
        Example,
        StageData,
        build_examples,
        pair_examples,
        usable_pairs,
        usable_records,
    )
    from fslm.finetune.run import (
        FinetuneReport,
        finetune,
        finetune_pairs,
        lora_param_count,
        plot_losses,
        read_pairs,
        trained_stack_config,
    )
    from fslm.finetune.trainer import cpu_has_bf16, plan_batches

_LAZY = {
    **dict.fromkeys(
        ("Example", "StageData", "build_examples", "pair_examples", "usable_pairs", "usable_records"), "examples"
    ),
    **dict.fromkeys(
        (
            "FinetuneReport",
            "finetune",
            "finetune_pairs",
            "lora_param_count",
            "plot_losses",
            "read_pairs",
            "trained_stack_config",
        ),
        "run",
    ),
    **dict.fromkeys(("cpu_has_bf16", "plan_batches"), "trainer"),
    "finetune_choice_kd": "choice_kd",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ALL_PROJECTIONS",
    "KD_LEVELS",
    "PRECISIONS",
    "SAVE_DTYPES",
    "Example",
    "FinetuneReport",
    "StageData",
    "TrainOptions",
    "build_examples",
    "cpu_has_bf16",
    "finetune",
    "finetune_choice_kd",
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
