"""Benchmark loaders: one per file format, all producing uniform :class:`Item` lists.

>>> from fslm.tasks import load_task, fewshot_items, build_context
>>> items = load_task("arc_challenge", limit=2)

Scorers compare ``item.context_for(i) + item.continuations[i]`` over the choices
(``contexts`` is non-empty only for WinoGrande). See docs/tasks.md.
"""

from fslm.tasks.base import Item, TaskSpec, build_context, format_fewshot
from fslm.tasks.registry import TASKS, fewshot_items, get_task, list_tasks, load_task, normalize_text, without_overlap

__all__ = [
    "TASKS",
    "Item",
    "TaskSpec",
    "build_context",
    "fewshot_items",
    "format_fewshot",
    "get_task",
    "list_tasks",
    "load_task",
    "normalize_text",
    "without_overlap",
]
