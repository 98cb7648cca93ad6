"""One stage of a stack as its YAML block says it: `StageConfig`, its kind and the stages it reads."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from fslm.generation import GenerationParams
from fslm.stages.blocks import RetrieveConfig, ScoreConfig, ToolConfig
from fslm.stages.endpoint_config import EndpointConfig
from fslm.stages.kinds_config import ConfidenceCondition, EscalateConfig, VerifyConfig, VoteConfig, When

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
