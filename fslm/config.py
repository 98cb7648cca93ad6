"""Stack configuration: YAML on disk, validated with pydantic; errors name the file and the field path."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from fslm.errors import ConfigError
from fslm.generation import GenerationParams
from fslm.io import load_yaml, read_text
from fslm.stages.blocks import RetrieveConfig, ScoreConfig, ToolConfig
from fslm.stages.endpoint_config import EndpointConfig
from fslm.stages.graph import CASES, conditional_stages, find_cycle, run_cases, topological_order, waves
from fslm.stages.kinds_config import (
    ANSWER_KINDS,
    WHEN_TAGS,
    ConfidenceCondition,
    EscalateConfig,
    VerifyConfig,
    VoteConfig,
    When,
    check_stage_kinds,
    resolve_defaults,
)

MAX_STACK_BYTES = 1 << 20  # a real stack file is a few KiB; checked before parsing
PROMPT = "prompt"
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


# The YAML blocks that make a stage something other than a generate stage. A stage has one, except `vote` + `score`
# (a score stage voting over drafts: kind vote).
KINDS = ("retrieve", "score", "tool", "verify", "vote", "escalate")
# Fields added with the stage graph: left out of a dump while unset, so the digests of existing stacks (distillation
# identity, experiment fingerprints, evaluation config hashes) stay what they were.
GRAPH_FIELDS = ("score", "tool", "model", "when", "final", "verify", "vote", "escalate", "endpoint")


class StageConfig(BaseModel):
    """One sub-step of answering: a small LM generating text (optionally with its LoRA adapter), or a retriever
    (`retrieve`), an option scorer (`score`) or a calculator (`tool`)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    instruction: str = Field("", description="the stage's role, sent as the system message (model stages: required)")
    template: str | None = Field(
        None,
        description="user message; {prompt} and {<earlier stage>} placeholders. Default: one labelled block per seen text",
    )
    sees: list[str] = Field(
        default_factory=lambda: [PROMPT], description="'prompt' and/or names of other stages (no cycles)"
    )
    generation: GenerationParams = Field(default_factory=GenerationParams)
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
    score: ScoreConfig | None = Field(None, description="make this a stage that picks one of the prompt's options")
    tool: ToolConfig | None = Field(None, description="make this a tool stage (calculator): no model, no adapter")
    verify: VerifyConfig | None = Field(None, description="make this a stage that judges a candidate answer: P(yes)")
    vote: VoteConfig | None = Field(None, description="sample k drafts and aggregate them (majority or mean scores)")
    escalate: EscalateConfig | None = Field(
        None, description="below a confidence threshold, answer with a larger model or stack instead"
    )
    model: str | None = Field(
        None, min_length=1, description="model reference for this stage (default: the stack's base_model)"
    )
    when: When | None = Field(
        None,
        description="run only on prompts with (or without) options, or only when a stage's confidence is below (or at "
        "or above) a threshold ({confidence_of: pick, below: 0.3}); otherwise the stage is skipped",
    )
    endpoint: EndpointConfig | None = Field(
        None,
        description="run this stage on an OpenAI-compatible server instead of a local model (docs/stacks.md, "
        "'Stages on an OpenAI-compatible endpoint'); default: the stack's `endpoint:`",
    )
    final: bool = Field(
        False,
        description="this stage's text may be the answer: the last final stage that ran gives it. No stage marked: "
        "the stage that runs last (trace order) is the final one",
    )

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str) -> str:
        if not NAME.match(v) or v == PROMPT:
            raise ValueError("expected a lowercase identifier like 'intent' (not 'prompt')")
        return v

    @model_validator(mode="after")
    def _one_kind_and_its_fields(self) -> StageConfig:
        kinds = [k for k in KINDS if getattr(self, k) is not None]
        if len(kinds) > 1 and kinds != ["score", "vote"]:
            raise ValueError(f"{', '.join(kinds)}: a stage has one kind; keep one of these blocks")
        chat = (self.score is not None and self.score.format == "chat") or (
            self.verify is not None and self.verify.format == "chat"
        )
        if self.kind == "generate" or chat or (self.kind == "vote" and self.score is None):
            if not self.instruction.strip():
                raise ValueError(
                    "instruction: required for a model stage (its system message; only retrieve, tool, escalate and "
                    "raw-format score and verify stages may leave it out)"
                )
        banned = {
            "retrieve": ("adapter", "teacher_prompt", "model"),
            "tool": ("adapter", "teacher_prompt", "model"),
        }.get(self.kind, ("teacher_prompt", "max_target_tokens") if self.kind != "generate" else ())
        extra = [f for f in banned if getattr(self, f) is not None]
        if extra:
            runs = {"retrieve": "runs no model", "tool": "runs no model", "score": "generates nothing"}.get(
                self.kind, "is not distilled"
            )
            raise ValueError(f"{', '.join(extra)}: a {self.kind} stage {runs}; remove {' and '.join(extra)}")
        if self.endpoint is not None and not self.runs_model:
            raise ValueError(
                f"endpoint: a {self.kind} stage runs no model of this stack"
                + (" (it escalates to another stack, which names its own)" if self.kind == "escalate" else "")
                + "; remove endpoint"
            )
        return self

    @model_serializer(mode="wrap")
    def _leave_out_unset_graph_fields(self, handler):
        data = handler(self)
        for key in GRAPH_FIELDS:
            if key in data and data[key] in (None, False):
                del data[key]
        return data

    @property
    def kind(self) -> str:
        """generate | retrieve | score | tool | verify | vote | escalate"""
        if self.vote is not None:
            return "vote"
        return next((k for k in KINDS if getattr(self, k) is not None), "generate")

    @property
    def runs_model(self) -> bool:
        """Whether the stage runs a model of this stack (an escalate stage to another stack runs that stack's)."""
        if self.kind == "escalate":
            return self.escalate.stack is None  # type: ignore[union-attr]
        return self.kind in ("generate", "score", "verify", "vote")

    @property
    def references(self) -> list[tuple[str, str]]:
        """(field, stage name) of the stages this stage reads besides `sees`: a confidence condition, a verify
        candidate, a vote's drafted stage, an escalation's confidence and small answer."""
        refs: list[tuple[str, str | None]] = []
        if isinstance(self.when, ConfidenceCondition):
            refs.append(("when.confidence_of", self.when.confidence_of))
        if self.verify is not None:
            refs.append(("verify.candidate", self.verify.candidate))
        if self.vote is not None:
            refs.append(("vote.over", self.vote.over))
        if self.escalate is not None:
            refs += [("escalate.confidence_of", self.escalate.confidence_of), ("escalate.answer", self.escalate.answer)]
        return [(f, n) for f, n in refs if n is not None]

    @property
    def needs(self) -> list[str]:
        """Every stage that must have run before this one: what it sees and what it references."""
        return list(dict.fromkeys([r for r in self.sees if r != PROMPT] + [n for _, n in self.references]))

    @property
    def option_case(self) -> str | None:
        """`when:` as far as the options of a prompt decide it (a confidence condition does not)."""
        return self.when if isinstance(self.when, str) else None

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


MAX_PROBLEMS = 20  # a list of 10k broken stages is 10k problems; the first few say what is wrong


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid stack config"]
    problems = err.errors()
    for problem in problems[:MAX_PROBLEMS]:
        parts = [p for k, p in enumerate(problem["loc"]) if not (p in WHEN_TAGS and problem["loc"][k - 1] == "when")]
        loc = ".".join(str(p) for p in parts)[:200] or "(top level)"  # an unknown key may be huge
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


def default_stack_path() -> Path:
    return Path(str(resources.files("fslm") / "stacks" / "default.yaml"))


def load_default_stack_config() -> StackConfig:
    return load_stack_config(default_stack_path())


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
