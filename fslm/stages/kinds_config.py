"""The YAML blocks of the confidence kinds (`verify`, `vote`, `escalate`) and of a confidence condition
(`when: {confidence_of: x, below: t}`). Plain pydantic models, like fslm/stages/blocks.py: fslm.config builds on them
and re-exports them. What each kind does at run time: fslm/stages/verify.py, vote.py, escalate.py, conditions.py."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

# The default verify question, in the words `fslm cascade signals` (fslm.collaborate.live.VERIFY_TEMPLATE) uses, so
# a threshold calibrated on its signals file applies to a raw-format verify stage on the same model.
VERIFY_QUESTION = "Question: {question}\nProposed answer: {answer}\nIs the proposed answer correct? Answer yes or no."


class VerifyConfig(BaseModel):
    """A stage that asks a model whether a candidate answer is right: P(yes) from the log-likelihoods of `yes` and
    `no` (two `engine.score` continuations), optionally temperature-scaled. Its text is the probability."""

    model_config = ConfigDict(extra="forbid")

    candidate: str | None = Field(
        None, description="the stage whose text is judged (default: the last stage in `sees` other than the prompt)"
    )
    format: Literal["raw", "chat"] = Field(
        "raw",
        description="raw: the question text itself is the context (as `fslm cascade signals`); chat: the stage's "
        "rendered chat input (instruction + question text), the yes/no words scored as its reply",
    )
    yes: str = Field(" yes", min_length=1, description="the continuation that means 'correct'")
    no: str = Field(" no", min_length=1, description="the continuation that means 'wrong'")
    temperature: float = Field(
        1.0,
        gt=0.0,
        le=100.0,
        description="P(yes) = sigmoid((logp(yes) - logp(no)) / temperature); fit it on held-out items with "
        "fslm.evaluate.calibration.fit_binary_temperature (docs/stacks.md)",
    )

    @model_validator(mode="after")
    def _two_answers(self) -> VerifyConfig:
        if self.yes == self.no:
            raise ValueError("yes, no: the two continuations must differ")
        return self


class VoteConfig(BaseModel):
    """k sampled drafts, aggregated. Without `over`: the stage's own generation is sampled k times and the most
    frequent normalised answer wins. With `over` (and a `score:` block on the stage): the stage it names (a generate
    stage this stage sees) is sampled k times and the options are scored once per draft; option probabilities are
    averaged over the drafts."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(5, ge=1, le=64, description="drafts per prompt")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="sampling temperature of the drafts (0 = greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, description="draft j of every prompt is sampled alone with seed `seed + j`")
    over: str | None = Field(None, description="score votes: the generate stage whose drafts vary the input")
    normalize: Literal["text", "number"] = Field(
        "text",
        description="free-text votes compare drafts by: text (lowercased, whitespace collapsed, outer quotes and end "
        "punctuation dropped) or number (the last number in the draft; a draft without one by its text)",
    )

    @model_validator(mode="after")
    def _drafts_can_differ(self) -> VoteConfig:
        if self.k > 1 and self.temperature == 0:
            raise ValueError(f"temperature: 0 gives {self.k} identical drafts; sample (temperature > 0) or use k: 1")
        return self


class EscalateConfig(BaseModel):
    """A stage that hands an item to a larger system when a confidence is below a threshold. Below: the stage runs
    its `model:` (scoring the options when the answer it replaces scored them, else generating) or the stack in
    `stack`, and its text is that answer. At or above: its text is the small answer, and nothing runs."""

    model_config = ConfigDict(extra="forbid")

    confidence_of: str = Field(..., description="a score (choice margin), verify (P(yes)) or vote stage")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="escalate when the confidence is below this")
    calibration: str | None = Field(
        None,
        min_length=1,
        description="instead of `threshold`: the JSON `fslm cascade calibrate --out` writes (relative to the stack "
        "file)",
    )
    answer: str | None = Field(
        None,
        description="the small answer kept at or above the threshold (default: `confidence_of`, or the candidate of "
        "a verify stage)",
    )
    stack: str | None = Field(
        None, min_length=1, description="a stack YAML (relative to this file) to run instead of this stage's `model:`"
    )
    format: Literal["chat", "raw"] | None = Field(
        None, description="when the larger model scores options: the format (default: the small answer stage's)"
    )

    @model_validator(mode="after")
    def _one_threshold(self) -> EscalateConfig:
        if (self.threshold is None) == (self.calibration is None):
            raise ValueError("threshold, calibration: give exactly one (a number in [0, 1] or a calibration file)")
        return self


class ConfidenceCondition(BaseModel):
    """`when: {confidence_of: pick, below: 0.3}`: run only when that stage's confidence is < 0.3 (`above`: >= it),
    so `below: t` and `above: t` split the prompts in two."""

    model_config = ConfigDict(extra="forbid")

    confidence_of: str = Field(..., min_length=1)
    below: float | None = Field(None, ge=0.0, le=1.0)
    above: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_bound(self) -> ConfidenceCondition:
        if (self.below is None) == (self.above is None):
            raise ValueError("below, above: give exactly one threshold")
        return self

    def holds(self, confidence: float) -> bool:
        return confidence < self.below if self.below is not None else confidence >= self.above  # type: ignore[operator]

    def describe(self, confidence: float | None = None) -> str:
        """'confidence of 'pick' 0.1200 < 0.3' (or without the value)."""
        op, bound = ("<", self.below) if self.below is not None else (">=", self.above)
        value = "" if confidence is None else f" {confidence:.4f}"
        return f"confidence of {self.confidence_of!r}{value} {op} {bound}"


def _when_kind(value: object) -> str:
    return "condition" if isinstance(value, (dict, ConfidenceCondition)) else "case"


# A stage's `when:`: 'has_options' / 'no_options', or a confidence condition. Tagged, so a bad value is reported
# against the one form it was meant as (the tag is left out of the error's field path: WHEN_TAGS).
When = Annotated[
    Union[  # noqa: UP007 - a tagged union needs the Union form
        Annotated[Literal["has_options", "no_options"], Tag("case")],
        Annotated[ConfidenceCondition, Tag("condition")],
    ],
    Discriminator(_when_kind),
]
WHEN_TAGS = ("case", "condition")

CONFIDENCE_KINDS = ("score", "verify", "vote")  # kinds whose records carry a numeric confidence
ANSWER_KINDS = ("generate", "score", "vote", "escalate")  # kinds whose text may be the answer

__all__ = [
    "ANSWER_KINDS",
    "CONFIDENCE_KINDS",
    "VERIFY_QUESTION",
    "ConfidenceCondition",
    "EscalateConfig",
    "VerifyConfig",
    "VoteConfig",
    "When",
]


# ---- checks across stages (called by StackConfig's validator; `cfg` is a fslm.config.StackConfig) -----------------


def resolve_defaults(cfg) -> None:
    """Fill the defaults that depend on other stages, so the graph sees them as dependencies: a verify stage's
    candidate (the last stage it sees), an escalation's small answer (its confidence stage, or that verify stage's
    candidate)."""
    by_name = {s.name: s for s in cfg.stages}
    for stage in cfg.stages:
        if stage.verify is not None and stage.verify.candidate is None:
            seen = [r for r in stage.sees if r != "prompt"]
            stage.verify.candidate = seen[-1] if seen else None
    for stage in cfg.stages:
        esc = stage.escalate
        if esc is not None and esc.answer is None and esc.confidence_of in by_name:
            source = by_name[esc.confidence_of]
            esc.answer = source.verify.candidate if source.verify is not None else esc.confidence_of


def check_stage_kinds(cfg) -> None:
    """What one stage's block cannot check alone: what verify, vote, escalate and confidence conditions point at."""
    by_name = {s.name: s for s in cfg.stages}
    for i, stage in enumerate(cfg.stages):
        conf = [("when.confidence_of", stage.when.confidence_of)] if isinstance(stage.when, ConfidenceCondition) else []
        if stage.escalate is not None:
            conf.append(("escalate.confidence_of", stage.escalate.confidence_of))
        for field, name in conf:
            if by_name[name].kind not in CONFIDENCE_KINDS:
                raise ValueError(
                    f"stages.{i}.{field}: stage {name!r} is a {by_name[name].kind} stage, which has no confidence "
                    f"(only {', '.join(CONFIDENCE_KINDS)} stages have one)"
                )
        if stage.verify is not None:
            _check_verify(i, stage, by_name)
        if stage.vote is not None:
            _check_vote(i, stage, by_name)
        if stage.escalate is not None:
            _check_escalate(i, stage, cfg)


def _check_verify(i: int, stage, by_name) -> None:
    candidate = stage.verify.candidate
    if candidate is None:
        raise ValueError(
            f"stages.{i}.verify.candidate: verify stage {stage.name!r} judges another stage's text; add that stage to "
            "its `sees` (the last one is the candidate) or name it in `verify.candidate`"
        )
    if by_name[candidate].kind not in ANSWER_KINDS:
        raise ValueError(
            f"stages.{i}.verify.candidate: {candidate!r} is a {by_name[candidate].kind} stage, not an answer "
            f"({', '.join(ANSWER_KINDS)})"
        )


def _check_vote(i: int, stage, by_name) -> None:
    over = stage.vote.over
    if stage.score is None and over is not None:
        raise ValueError(
            f"stages.{i}.vote.over: a vote over another stage's drafts scores options; add a `score:` block (or drop "
            "`over` to vote over this stage's own drafts)"
        )
    if stage.score is not None:
        if over is None:
            raise ValueError(
                f"stages.{i}.vote.over: a score stage's vote needs `over`: the generate stage it sees whose k drafts "
                "vary its input"
            )
        if over not in stage.sees or by_name[over].kind != "generate":
            raise ValueError(f"stages.{i}.vote.over: {over!r} must be a generate stage in this stage's `sees`")


def _check_escalate(i: int, stage, cfg) -> None:
    esc = stage.escalate
    small = cfg.stage(esc.answer)
    if small.kind not in ANSWER_KINDS or small.name == stage.name:
        raise ValueError(
            f"stages.{i}.escalate.answer: {small.name!r} is a {small.kind} stage; the small answer an escalation "
            "replaces is a generate, score, vote or escalate stage"
        )
    if esc.stack is not None:
        extra = [f for f in ("model", "adapter") if getattr(stage, f) is not None]
        if extra:
            raise ValueError(
                f"stages.{i}.{extra[0]}: escalate stage {stage.name!r} runs the stack in `escalate.stack`; remove "
                f"{' and '.join(extra)} (or the stack)"
            )
        return
    if stage.model is None:
        raise ValueError(
            f"stages.{i}.escalate: escalate stage {stage.name!r} has no larger system: give it `model:` (the larger "
            "model, loaded once) or `escalate.stack` (a stack YAML)"
        )
    scores = cfg.scores_options(stage)
    if not scores and esc.format is not None:
        raise ValueError(f"stages.{i}.escalate.format: {small.name!r} generates, so the larger model generates too")
    fmt = esc.format or (_score_format(cfg, small) if scores else None)
    if (not scores or fmt == "chat") and not stage.instruction.strip():
        raise ValueError(
            f"stages.{i}.instruction: required: the larger model {'scores in chat format' if scores else 'generates'} "
            "with this stage's instruction as its system message"
        )


def _score_format(cfg, stage) -> str:
    if stage.kind == "escalate":
        return stage.escalate.format or _score_format(cfg, cfg.stage(stage.escalate.answer))
    return stage.score.format


def escalate_format(cfg, stage) -> str | None:
    """The format the larger model of an escalate stage scores options in (None: it generates)."""
    return _score_format(cfg, stage) if cfg.scores_options(stage) else None
