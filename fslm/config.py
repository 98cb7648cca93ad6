"""Stack configuration: YAML on disk, validated with pydantic; errors name the file and the field path."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fslm.errors import ConfigError, ModelFileError
from fslm.io import load_yaml, read_text
from fslm.models import check_adapter_folder
from fslm.retrieve.index import MANIFEST

MAX_STACK_BYTES = 1 << 20  # a real stack file is a few KiB; checked before parsing
PROMPT = "prompt"
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


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


class StageConfig(BaseModel):
    """One sub-step of answering: a small LM (optionally with its LoRA adapter), or a retriever (`retrieve`)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    instruction: str = Field("", description="the stage's role, sent as the system message (model stages: required)")
    template: str | None = Field(
        None,
        description="user message; {prompt} and {<earlier stage>} placeholders. Default: one labelled block per seen text",
    )
    sees: list[str] = Field(default_factory=lambda: [PROMPT], description="'prompt' and/or names of earlier stages")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    adapter: str | None = Field(None, description="PEFT LoRA adapter folder, relative to the stack file")
    label: str | None = Field(None, description="how later stages see this stage's text (default: its name, titled)")
    teacher_prompt: str | None = Field(
        None,
        description="distillation only: the teacher's user message for this stage; placeholders {prompt}, {answer} (the "
        "gold output, answer-hinted mode) and {<earlier stage>} (the teacher's text for it). None: the teacher plays the stage",
    )
    max_target_tokens: int | None = Field(
        None,
        ge=1,
        description="distillation only: longer targets (student tokens) are filtered as too_long. None: generation.max_new_tokens",
    )
    retrieve: RetrieveConfig | None = Field(None, description="make this a retrieval stage: no model, no adapter")

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str) -> str:
        if not NAME.match(v) or v == PROMPT:
            raise ValueError("expected a lowercase identifier like 'intent' (not 'prompt')")
        return v

    @model_validator(mode="after")
    def _model_or_retriever(self) -> StageConfig:
        if self.retrieve is None:
            if not self.instruction.strip():
                raise ValueError(
                    "instruction: required for a model stage (only a stage with 'retrieve' may leave it out)"
                )
            return self
        extra = [f for f in ("adapter", "teacher_prompt") if getattr(self, f) is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)}: a retrieve stage runs no model; remove {' and '.join(extra)}")
        return self

    @property
    def is_retrieval(self) -> bool:
        return self.retrieve is not None

    @model_validator(mode="after")
    def _targets_fit_generation(self) -> StageConfig:
        limit, budget = self.max_target_tokens, self.generation.max_new_tokens
        if limit is not None and limit > budget:
            raise ValueError(
                f"max_target_tokens {limit} exceeds generation.max_new_tokens {budget}: the stage could never "
                "generate such a target; raise max_new_tokens or lower max_target_tokens"
            )
        return self

    @property
    def display_label(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()


class StackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1)
    base_model: str = Field("smollm2-135m", min_length=1)
    dtype: Literal["float32", "bfloat16"] = "float32"
    engine: Literal["hf", "llamacpp", "auto"] = Field(
        "hf",
        description="inference backend: hf (transformers + PEFT, the reference), llamacpp (llama.cpp on the GGUF "
        "weights, `fslm[fast]`) or auto (llama.cpp where it can run, else hf). `--engine` on a command overrides it",
    )
    chat_template: bool = Field(True, description="render stage inputs with the model's chat template")
    max_prompt_tokens: int = Field(2048, ge=1, description="longer user prompts are rejected, never silently cut")
    description: str = ""
    stages: list[StageConfig] = Field(..., min_length=1)

    # Where the file was read from; adapter paths are relative to it. Not part of the YAML.
    source_path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _stages_see_only_the_past(self) -> StackConfig:
        seen: set[str] = set()
        for i, stage in enumerate(self.stages):
            if stage.name in seen:
                raise ValueError(f"stages.{i}.name: duplicate stage name {stage.name!r}")
            for j, ref in enumerate(stage.sees):
                if ref != PROMPT and ref not in seen:
                    raise ValueError(
                        f"stages.{i}.sees.{j}: {ref!r} is not 'prompt' or an EARLIER stage (earlier: {sorted(seen) or 'none'})"
                    )
            if stage.template is not None:
                for name in PLACEHOLDER.findall(stage.template):
                    if name not in stage.sees:
                        raise ValueError(
                            f"stages.{i}.template: placeholder {{{name}}} is not in this stage's sees {stage.sees}"
                        )
            seen.add(stage.name)
        if self.stages[-1].is_retrieval:
            raise ValueError(f"stages.{len(self.stages) - 1}.retrieve: the final (answer) stage must be a model stage")
        return self

    @property
    def answer_stage(self) -> StageConfig:
        return self.stages[-1]

    def adapter_path(self, stage: StageConfig) -> Path | None:
        if stage.adapter is None:
            return None
        path = Path(stage.adapter).expanduser()
        if not path.is_absolute() and self.source_path is not None:
            path = self.source_path.parent / path
        return path

    def index_path(self, stage: StageConfig) -> Path | None:
        """A retrieve stage's index folder (relative paths are relative to the stack file, like adapters)."""
        if stage.retrieve is None:
            return None
        path = Path(stage.retrieve.index).expanduser()
        if not path.is_absolute() and self.source_path is not None:
            path = self.source_path.parent / path
        return path

    def unread_stages(self) -> list[str]:
        """Intermediate stages whose text no later stage `sees` (a template may only name what its stage sees): they
        cost generation and show up in the trace, but cannot change the answer. Often meant (a readable
        restatement), sometimes a leftover of removing the stage that read them."""
        read = {name for s in self.stages for name in s.sees}
        return [s.name for s in self.stages[:-1] if s.name not in read]

    def without_adapters(self) -> StackConfig:
        """The same stack prompt-only: what the trained adapters add is measured against this."""
        return self.model_copy(update={"stages": [s.model_copy(update={"adapter": None}) for s in self.stages]})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)


MAX_PROBLEMS = 20  # a list of 10k broken stages is 10k problems; the first few say what is wrong


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid stack config"]
    problems = err.errors()
    for problem in problems[:MAX_PROBLEMS]:
        loc = ".".join(str(p) for p in problem["loc"])[:200] or "(top level)"  # an unknown key may be huge
        msg = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "value_error" and ":" in msg and not problem["loc"]:
            lines.append(f"  {msg}")
        else:
            got = problem.get("input")
            got_text = "" if isinstance(got, dict) or got is None else f" (got {_short(got)})"
            lines.append(f"  {loc}: {msg}{got_text}")
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_PROBLEMS} more")
    return "\n".join(lines)


def _short(value: object, limit: int = 80) -> str:
    """A bad value as the error shows it: a 1 MiB string is not repeated back in full."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_stack_config(data: object, where: str = "<config>", source_path: Path | None = None) -> StackConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping with 'name' and 'stages' at the top level, got {type(data).__name__}"
        )
    try:
        cfg = StackConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, where)) from None
    cfg.source_path = source_path
    return cfg


def load_stack_config(path: str | Path) -> StackConfig:
    """Read and validate a stack YAML file: at most MAX_STACK_BYTES (checked before parsing), strict UTF-8, parsed by
    `fslm.io.StrictYamlLoader` (yaml.safe_load's loader with the alias expansion and nesting capped, so an alias
    bomb is refused while it is being read, not after it has eaten the memory)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: stack file not found")
    text = read_text(path, limit=MAX_STACK_BYTES, error=ConfigError)
    data = load_yaml(text, str(path), error=ConfigError)
    return parse_stack_config(data, str(path), path.resolve())


def check_adapters(cfg: StackConfig) -> None:
    """Fail early, naming the stage, when an adapter or retrieval index folder is missing or incomplete."""
    for i, stage in enumerate(cfg.stages):
        where = cfg.source_path or "<config>"
        index = cfg.index_path(stage)
        if index is not None and not (index / MANIFEST).is_file():
            raise ConfigError(
                f"{where}: stages.{i}.retrieve.index: no retrieval index in {index} (build one with "
                "`fslm retrieve corpus` then `fslm retrieve index`)"
            )
        path = cfg.adapter_path(stage)
        if path is None:
            continue
        try:
            check_adapter_folder(path)
        except ModelFileError as err:
            raise ConfigError(f"{where}: stages.{i}.adapter: {err}") from None


def default_stack_path() -> Path:
    return Path(str(resources.files("fslm") / "stacks" / "default.yaml"))


def load_default_stack_config() -> StackConfig:
    return load_stack_config(default_stack_path())


def validate_stack(path: str | Path) -> StackConfig:
    """Python twin of `fslm stack validate`: schema, references, templates and adapter folders."""
    cfg = load_stack_config(path)
    check_adapters(cfg)
    return cfg


def without_stage(cfg: StackConfig, name: str) -> StackConfig:
    """The same stack with stage `name` removed (ablations): later stages stop seeing it.

    A later stage whose `sees` would become empty sees the prompt instead; a later stage whose template names the
    removed stage is an error (its text would have a hole). Teacher prompts that name it are dropped: the derived
    stack is for running and evaluating, not for distilling. Adapter paths stay relative to the same source file.
    """
    names = [s.name for s in cfg.stages]
    if name not in names:
        raise ConfigError(f"stack {cfg.name!r} has no stage {name!r}; stages: {names}")
    if name == names[-1]:
        raise ConfigError(
            f"stage {name!r} is the final (answer) stage of {cfg.name!r}; only earlier stages can be removed"
        )
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
