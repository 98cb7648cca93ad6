"""Stacks derived from a stack: the chain distillation and fine-tuning train, and stacks with stages removed."""

from __future__ import annotations

from fslm.config.load import parse_stack_config
from fslm.config.stack import StackConfig
from fslm.config.stage import PLACEHOLDER, PROMPT
from fslm.errors import ConfigError


def free_form_chain(cfg: StackConfig) -> StackConfig:
    """The stages that answer prompts without options, as distillation and fine-tuning see them: their data are
    instructions, so a stage with `when: has_options` (e.g. an option scorer, trained on pairs instead) is left out
    and `when: no_options` always holds. A remaining stage that reads a left-out one is refused by `check_chain`."""
    kept = [s for s in cfg.stages if s.when != "has_options"]
    if len(kept) == len(cfg.stages) and not any(s.when == "no_options" for s in kept):
        return cfg
    dropped = {s.name for s in cfg.stages} - {s.name for s in kept}
    where = cfg.source_path or cfg.name
    for stage in kept:
        read = sorted(dropped & set(stage.sees))
        if read:
            raise ConfigError(
                f"{where}: stage {stage.name!r} reads {read}, which run only on prompts with options; distillation "
                "and fine-tuning train the stages that answer prompts without options"
            )
    stages = [s.model_copy(update={"when": None}) if s.when == "no_options" else s for s in kept]
    return cfg.model_copy(update={"stages": stages})


def check_chain(cfg: StackConfig, verb: str) -> None:
    """Distillation and fine-tuning build each stage's text from the stages listed before it, and teach generate
    stages (retrieve stages have nothing to learn). A stack that needs more (a score, tool, verify, vote or escalate
    stage, a stage that reads a later one, a stage on its own model or under a condition) is refused here by name
    rather than trained wrong."""
    where = cfg.source_path or cfg.name
    earlier: set[str] = set()
    for i, stage in enumerate(cfg.stages):
        if stage.kind not in ("generate", "retrieve"):
            raise ConfigError(
                f"{where}: stages.{i} ({stage.name}) is a {stage.kind} stage: {verb} handles generate and retrieve "
                f"stages only (a score stage's adapter is trained on option pairs: `fslm finetune --pairs`)"
            )
        for field in ("model", "when"):
            if getattr(stage, field) is not None:
                raise ConfigError(f"{where}: stages.{i}.{field}: {verb} runs every stage on the base model, always")
        later = [ref for ref in stage.sees if ref != PROMPT and ref not in earlier]
        if later:
            raise ConfigError(
                f"{where}: stages.{i}.sees: {stage.name!r} reads {later}, listed after it; {verb} needs every stage "
                "to read only stages listed before it"
            )
        earlier.add(stage.name)


def without_stage(cfg: StackConfig, name: str) -> StackConfig:
    """The same stack with stage `name` removed (ablations): later stages stop seeing it.

    A later stage whose `sees` would become empty sees the prompt instead; a later stage whose template names the
    removed stage is an error (its text would have a hole). Teacher prompts that name it are dropped: the derived
    stack is for running and evaluating, not for distilling. Adapter paths stay relative to the same source file.
    """
    names = [s.name for s in cfg.stages]
    if name not in names:
        raise ConfigError(f"stack {cfg.name!r} has no stage {name!r}; stages: {names}")
    if name in {s.name for s in cfg.final_stages}:
        raise ConfigError(f"stage {name!r} is a final (answer) stage of {cfg.name!r}; only other stages can be removed")
    stages = []
    for i, stage in enumerate(cfg.stages):
        if stage.name == name:
            continue
        if name not in stage.sees:
            stages.append(stage)
            continue
        if stage.template is not None and name in PLACEHOLDER.findall(stage.template):
            raise ConfigError(
                f"{cfg.source_path or cfg.name}: stages.{i}.template uses {{{name}}}; give stage {stage.name!r} a template "
                f"without it (or none) before removing {name!r}"
            )
        update: dict = {"sees": [s for s in stage.sees if s != name] or [PROMPT]}
        if stage.teacher_prompt is not None and name in PLACEHOLDER.findall(stage.teacher_prompt):
            update["teacher_prompt"] = None
        stages.append(stage.model_copy(update=update))
    data = cfg.model_dump(mode="json", exclude_none=True)
    data["stages"] = [s.model_dump(mode="json", exclude_none=True) for s in stages]
    return parse_stack_config(data, f"{cfg.name} without {name}", cfg.source_path)  # re-validated


def keep_stages(cfg: StackConfig, keep: list[str] | tuple[str, ...]) -> StackConfig:
    """The stack reduced to the stages in `keep` (the final stage must be among them), via `without_stage`."""
    names = [s.name for s in cfg.stages]
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise ConfigError(f"stack {cfg.name!r} has no stage(s) {unknown}; stages: {names}")
    for name in names:
        if name not in keep:
            cfg = without_stage(cfg, name)
    return cfg
