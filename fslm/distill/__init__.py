"""`fslm distill`: a teacher writes each stage's target text for instruction data (see docs/distill.md)."""

from fslm.distill.filters import check_target, is_repetitive, leaks_answer
from fslm.distill.runner import (
    DistillOptions,
    DistillReport,
    distill,
    distill_identity,
    leak_stages,
    summarize,
    teacher_messages,
)
from fslm.distill.store import DistillStore, read_distilled
from fslm.tasks.instructions import Instruction, default_data_path, load_instructions

__all__ = [
    "DistillOptions",
    "DistillReport",
    "DistillStore",
    "Instruction",
    "check_target",
    "default_data_path",
    "distill",
    "distill_identity",
    "is_repetitive",
    "leak_stages",
    "leaks_answer",
    "load_instructions",
    "read_distilled",
    "summarize",
    "teacher_messages",
]
