"""What a stage is given: `stage_messages` is THE function that decides it. `Stack.run`, distillation and
fine-tuning all call it, so a stage is trained on exactly the text it receives at inference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fslm.config import PLACEHOLDER, PROMPT, StackConfig, StageConfig


def stage_user_text(stage: StageConfig, prompt: str, outputs: Mapping[str, str], labels: Mapping[str, str]) -> str:
    """The user message of a stage: its template filled, or one labelled block per text it sees."""
    values = {PROMPT: prompt, **outputs}
    missing = [name for name in stage.sees if name not in values]
    if missing:
        raise KeyError(f"stage {stage.name!r} needs the output of {missing} first")
    if stage.template is not None:
        # Substitute by regex, not str.format: user text may contain braces.
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], stage.template)
    blocks = []
    for name in stage.sees:
        label = "Question" if name == PROMPT else labels.get(name, name)
        blocks.append(f"{label}: {values[name]}")
    return "\n\n".join(blocks)


def stage_labels(cfg: StackConfig) -> dict[str, str]:
    return {s.name: s.display_label for s in cfg.stages}


def stage_messages(cfg: StackConfig, index: int, prompt: str, outputs: Mapping[str, str]) -> list[dict[str, str]]:
    stage = cfg.stages[index]
    return [
        {"role": "system", "content": stage.instruction},
        {"role": "user", "content": stage_user_text(stage, prompt, outputs, stage_labels(cfg))},
    ]


def raw_text(messages: Sequence[Mapping[str, str]]) -> str:
    """A stage's input without a chat template (`chat_template: false`)."""
    return "\n\n".join(m["content"] for m in messages)
