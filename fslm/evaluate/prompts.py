"""How a stack is shown a benchmark item, and what its final stage scores (one convention for every stack).

A model baseline sees lm-eval's raw context (``fslm.tasks``). A stack is a chat system, so it gets a plain question
that a person could answer, with the options listed (the early stages can reason about them); its answer stage is
then asked, through the normal stage input, to give the answer, and each option's text is scored as that stage's
reply. Changing anything here changes every stack's numbers: bump PROMPT_VERSION so old runs are not resumed.
"""

from __future__ import annotations

from collections.abc import Mapping

from fslm.config import StackConfig, StageConfig
from fslm.stages.score import Choices, notes_text
from fslm.tasks import Item, build_context

PROMPT_VERSION = "stack-prompt-v1"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# A one-line instruction before the item text, per task; tasks not listed get the bare question.
_LEADS = {
    "hellaswag": "Which ending continues this text best?",
    "winogrande": "Which option correctly fills the blank (_) in this sentence?",
    "piqa": "Which solution achieves this goal best?",
    "openbookqa": "Which option completes this statement correctly?",
    "boolq": "Read the passage and answer the question with yes or no.",
}


def _item_text(item: Item) -> str:
    if item.task == "boolq":
        return f"Passage: {item.meta.get('passage', '')}\nQuestion: {item.meta.get('query', item.question)}"
    if item.task == "piqa":
        return f"Goal: {item.question}"
    return item.question


def stack_prompt(item: Item) -> str:
    """The user prompt a stack receives for `item`: optional task lead, the question, then lettered options."""
    parts = [p for p in (_LEADS.get(item.task), _item_text(item)) if p]
    if item.choices:
        options = "\n".join(f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(item.choices))
        parts.append(f"Options:\n{options}")
    return "\n\n".join(parts)


def model_chat_prompt(engine, item: Item) -> str:
    """What a model alone is given for a free-text task's item (`TaskSpec.free_text`: instruction following has no
    raw-context convention to continue): one user turn of `stack_prompt(item)` in its chat template."""
    return engine.render_chat([{"role": "user", "content": stack_prompt(item)}])


def stack_continuations(item: Item) -> tuple[str, ...]:
    """What the answer stage's reply is scored against: each option's plain text (no letter, no leading space)."""
    return tuple(c.strip() for c in item.choices)


def raw_notes(cfg: StackConfig, outputs: Mapping[str, str], stage: StageConfig | None = None) -> str:
    """The texts the answer stage (or `stage`) reads, as labelled lines ahead of lm-eval's raw context (answer format
    "raw": the base model scores each option the way it does alone, with the stack's notes as the only change)."""
    stage = stage or cfg.answer_stage
    return notes_text({s.name: s.display_label for s in cfg.stages}, stage.sees, outputs)


def item_choices(item: Item) -> Choices | None:
    """What a `score` stage chooses among for a benchmark item: in "chat" format the same continuations a chat answer
    stage is scored on (`stack_continuations`), in "raw" format lm-eval's own contexts and continuations (what the
    model baseline scores), so a score stage's option scores ARE the item's choice scores."""
    if not item.choices:
        return None
    n = len(item.choices)
    return Choices(
        tuple(c.strip() for c in item.choices),
        stack_continuations(item),
        tuple(build_context(item, (), choice=i if item.contexts else None) for i in range(n)),
        tuple(item.continuations),
    )
