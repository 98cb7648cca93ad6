"""A whole stack: `StackConfig`, its stages as one graph (checked when it is built) and what the runtime asks of it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fslm.config.stage import PLACEHOLDER, PROMPT, StageConfig
from fslm.stages.endpoint_config import EndpointConfig
from fslm.stages.graph import CASES, conditional_stages, find_cycle, run_cases, topological_order, waves
from fslm.stages.kinds_config import ANSWER_KINDS, check_stage_kinds, resolve_defaults


class StackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1)
    base_model: str = Field("smollm2-135m", min_length=1)
    dtype: Literal["float32", "bfloat16"] = "float32"
    engine: str = Field(
        "hf",
        description="inference backend: hf (transformers + PEFT, the reference), llamacpp (llama.cpp on the GGUF "
        "weights, `fslm[fast]`), vllm (vLLM with LoRA, `fslm[vllm]`), auto (llama.cpp where it can run, else "
        "hf) or an installed engine plugin "
        "(docs/engine.md). `--engine` on a command overrides it",
    )
    chat_template: bool = Field(True, description="render stage inputs with the model's chat template")
    max_prompt_tokens: int = Field(2048, ge=1, description="longer user prompts are rejected, never silently cut")
    description: str = ""
    endpoint: EndpointConfig | None = Field(
        None,
        description="run every model stage (and the base model) on this OpenAI-compatible server; a stage's own "
        "`endpoint:` takes precedence. Nothing of the base model is loaded locally",
    )
    stages: list[StageConfig] = Field(..., min_length=1)

    @field_validator("engine", mode="before")
    @classmethod
    def _known_engine(cls, value: object) -> object:
        """One of the registry's names (`fslm.engine.registry`), worded as a Literal field's error always was."""
        from fslm.engine.registry import engine_names

        names = engine_names()
        if not isinstance(value, str) or value not in names:
            expected = ", ".join(repr(n) for n in names[:-1]) + f" or {names[-1]!r}"
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return value

    # Where the file was read from; adapter paths are relative to it. Not part of the YAML.
    source_path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _stages_form_a_graph(self) -> StackConfig:
        names = [s.name for s in self.stages]
        resolve_defaults(self)
        for i, stage in enumerate(self.stages):
            if stage.name in names[:i]:
                raise ValueError(f"stages.{i}.name: duplicate stage name {stage.name!r}")
        for i, stage in enumerate(self.stages):
            for j, ref in enumerate(stage.sees):
                if ref != PROMPT and ref not in names:
                    shown = names if len(names) <= 20 else [*names[:20], "..."]
                    raise ValueError(
                        f"stages.{i}.sees.{j}: {_short(ref)} is not 'prompt' or a stage of this stack {shown}"
                    )
            for field, ref in stage.references:
                if ref not in names:
                    raise ValueError(f"stages.{i}.{field}: {_short(ref)} is not a stage of this stack")
            if stage.template is not None:
                for name in PLACEHOLDER.findall(stage.template):
                    if name not in stage.sees:
                        raise ValueError(
                            f"stages.{i}.template: placeholder {{{name}}} is not in this stage's sees {stage.sees}"
                        )
        sees = self.sees_map
        cycle = find_cycle(sees)
        if cycle is not None:
            i = names.index(cycle[0])
            stage = self.stages[i]
            where = (
                next((f for f, n in stage.references if n == cycle[1]), None) if cycle[1] not in stage.sees else None
            )
            raise ValueError(
                f"stages.{i}.{where or f'sees.{stage.sees.index(cycle[1])}'}: the stages see each other in a cycle "
                f"({' -> '.join(cycle[:12])}{' -> ...' if len(cycle) > 12 else ''}); a stage can only read texts that "
                "exist before it runs"
            )
        check_stage_kinds(self)
        self._check_finals_and_conditions()
        return self

    def _check_finals_and_conditions(self) -> None:
        names = [s.name for s in self.stages]
        last = self.stage(self.trace_order[-1])
        if not any(s.final for s in self.stages) and last.kind not in ANSWER_KINDS:
            raise ValueError(
                f"stages.{names.index(last.name)}.{last.kind}: the final (answer) stage must be a generate, score, "
                "vote or escalate stage; or mark the answer stage(s) `final: true`"
            )
        for stage in self.final_stages:
            if stage.kind not in ANSWER_KINDS:
                raise ValueError(
                    f"stages.{names.index(stage.name)}.final: a {stage.kind} stage cannot give the answer "
                    "(only generate, score, vote and escalate stages can)"
                )
        cases = self.run_cases()
        for i, stage in enumerate(self.stages):
            if self.scores_options(stage) and "has_options" not in cases[stage.name]:
                why = "when: no_options" if stage.when == "no_options" else "it sees a stage that runs only then"
                raise ValueError(
                    f"stages.{i}.{'when' if stage.when == 'no_options' else 'sees'}: {stage.kind} stage {stage.name!r} "
                    f"picks among the prompt's options but runs only on prompts without options ({why}); it could "
                    "never run"
                )
        by_confidence = {s.name for s in self.stages if s.when is not None and s.option_case is None}
        maybe = conditional_stages(self.trace_order, self.sees_map, by_confidence)
        for case in CASES:
            if not any(case in cases[s.name] and s.name not in maybe for s in self.final_stages):
                finals = [s.name for s in self.final_stages]
                kind = "with options" if case == "has_options" else "without options"
                raise ValueError(
                    f"stages: no final stage runs on prompts {kind} (final: {finals}, and their `when:` or the "
                    "stages they see exclude those prompts, or leave them to a confidence); add a final stage that "
                    "always runs on them or drop a `when:`"
                )

    @property
    def sees_map(self) -> dict[str, list[str]]:
        """Each stage's dependencies: the stages it sees and the ones it references (`StageConfig.needs`)."""
        return {s.name: s.needs for s in self.stages}

    @property
    def trace_order(self) -> list[str]:
        """The order stages appear in a trace: the list order when every stage sees only stages listed before it,
        else the stable topological order."""
        return topological_order([s.name for s in self.stages], self.sees_map)

    def waves(self) -> list[list[str]]:
        """Stages grouped by when they can run: each wave needs only the prompt and earlier waves' texts."""
        return waves(self.trace_order, self.sees_map)

    def run_cases(self) -> dict[str, frozenset[str]]:
        """Per stage, the prompts it runs on ('has_options', 'no_options'), given `when:` and what it sees."""
        return run_cases(self.trace_order, self.sees_map, {s.name: s.option_case for s in self.stages})

    def stage(self, name: str) -> StageConfig:
        return next(s for s in self.stages if s.name == name)

    def index_of(self, name: str) -> int:
        return [s.name for s in self.stages].index(name)

    @property
    def final_stages(self) -> list[StageConfig]:
        """The stages whose text may be the answer (list order): those marked `final`, else the stage that runs last
        (the last in trace order: the last of the list when every stage sees only stages listed before it)."""
        marked = [s for s in self.stages if s.final]
        return marked or [self.stage(self.trace_order[-1])]

    @property
    def answer_stage(self) -> StageConfig:
        """The answer stage of a stack with one final stage; with several, the last in trace order (the one that
        answers when all run)."""
        finals = {s.name for s in self.final_stages}
        return self.stage([n for n in self.trace_order if n in finals][-1])

    def answer_stage_for(self, case: str) -> StageConfig:
        """The stage that answers prompts with options (case 'has_options') or without ('no_options'): the last final
        stage in trace order that runs on them (the validator makes sure there is one)."""
        cases, finals = self.run_cases(), {s.name for s in self.final_stages}
        return self.stage([n for n in self.trace_order if n in finals and case in cases[n]][-1])

    def stage_endpoint(self, stage: StageConfig) -> EndpointConfig | None:
        """The server a model stage runs on: its own `endpoint:`, else the stack's; None means a local engine."""
        if not stage.runs_model:
            return None
        return stage.endpoint or self.endpoint

    def stage_model(self, stage: StageConfig) -> str:
        """The reference of the engine `stage` runs on: its model (default: base_model), or for a stage on an
        endpoint that endpoint's served name @ URL (`EndpointConfig.ref`)."""
        model = stage.model or self.base_model
        endpoint = self.stage_endpoint(stage)
        return endpoint.ref(model) if endpoint is not None else model

    @property
    def base_ref(self) -> str:
        """The reference of the stack's base engine: base_model, or its endpoint ref under a stack `endpoint:`."""
        return self.endpoint.ref(self.base_model) if self.endpoint is not None else self.base_model

    def endpoint_engines(self) -> dict[str, tuple[str, EndpointConfig]]:
        """Engine reference -> (served model name, endpoint) for every engine of the stack that is a server."""
        found: dict[str, tuple[str, EndpointConfig]] = {}
        if self.endpoint is not None:
            found[self.base_ref] = (self.endpoint.served_model(self.base_model), self.endpoint)
        for stage in self.stages:
            endpoint = self.stage_endpoint(stage)
            if endpoint is not None:
                model = stage.model or self.base_model
                found.setdefault(endpoint.ref(model), (endpoint.served_model(model), endpoint))
        return found

    def scores_options(self, stage: StageConfig) -> bool:
        """Whether the stage's text is one of the prompt's options and its record carries option scores: a score
        stage, a vote over a score stage, an escalation of either."""
        if stage.kind == "escalate":
            small = stage.escalate.answer  # type: ignore[union-attr]
            return small is not None and small in self.sees_map and self.scores_options(self.stage(small))
        return stage.score is not None

    def escalate_path(self, stage: StageConfig, field: str) -> Path | None:
        """An escalate stage's `stack` or `calibration` file (relative paths are relative to the stack file)."""
        value = getattr(stage.escalate, field, None) if stage.escalate is not None else None
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() or self.source_path is None else self.source_path.parent / path

    @property
    def models(self) -> list[str]:
        """Every engine reference the stack runs (`stage_model`), the base model's first, each once."""
        return list(dict.fromkeys([self.base_ref] + [self.stage_model(s) for s in self.stages if s.runs_model]))

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
        """Non-final stages whose text no stage `sees` (a template may only name what its stage sees): they
        cost generation and show up in the trace, but cannot change the answer. Often meant (a readable
        restatement), sometimes a leftover of removing the stage that read them."""
        read = {name for s in self.stages for name in s.needs}
        finals = {s.name for s in self.final_stages}
        return [s.name for s in self.stages if s.name not in read and s.name not in finals]

    def without_adapters(self) -> StackConfig:
        """The same stack prompt-only: what the trained adapters add is measured against this."""
        return self.model_copy(update={"stages": [s.model_copy(update={"adapter": None}) for s in self.stages]})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)


def _short(value: object, limit: int = 80) -> str:
    """A bad value as the error shows it: a 1 MiB string is not repeated back in full."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
