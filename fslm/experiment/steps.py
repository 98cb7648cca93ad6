"""Training steps of an experiment spec: one of distill, synth, curate, finetune, corpus, index, pairs, finetune_pairs,
choice_kd per named step. Each is one library call; a step names the steps it reads (their outputs live under
<out>/train/<step>/)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fslm.distill.curate import CurateOptions
from fslm.distill.synth import SynthOptions


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DistillStep(_Strict):
    """`fslm.distill.distill`: a teacher writes every stage's target text (output: train/<step>/distilled.jsonl)."""

    stack: str = Field("default", description="'default' or a stack YAML path: the stages to write targets for")
    data: str | None = Field(
        None,
        description="instruction data (JSON/JSONL), a synth step, or a curate step of Alpaca records; default: the "
        "shared Alpaca sample",
    )
    limit: int | None = Field(None, ge=1, description="first N unique records")
    teacher: str | None = Field(None, description="teacher model reference (default: the stack's base model)")
    batch_size: int = Field(8, ge=1, le=256)
    hints: bool = Field(True, description="show the teacher the gold output (answer-hinted distillation)")
    teacher_dtype: Literal["float32", "bfloat16", "auto"] | None = Field(
        None,
        description="the teacher's dtype (auto: bfloat16 on CPUs with native bf16, else float32; default: the stack's)",
    )


class FinetuneStep(_Strict):
    """`fslm.finetune.finetune`: one LoRA adapter per stage (output: train/<step>/stack.yaml + adapters/)."""

    stack: str = Field("default", description="'default', a stack YAML path, or another finetune step's name")
    data: str = Field(..., description="a distill step, a curate step of distilled records, or a distilled JSONL")
    stages: list[str] | None = Field(None, description="train only these stages (default: every model stage)")
    options: dict[str, Any] = Field(default_factory=dict, description="fslm.finetune.TrainOptions fields")

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return _train_options(options)


class PairsStep(_Strict):
    """`fslm.finetune.finetune_pairs`: one stage trained on {id, context, continuation} pairs."""

    stack: str = Field("default", description="'default', a stack YAML path, or a step's name that writes a stack")
    stage: str = Field(..., min_length=1)
    pairs: str = Field(..., min_length=1, description="a pairs step of this spec, or a pairs JSONL path")
    options: dict[str, Any] = Field(default_factory=dict, description="fslm.finetune.TrainOptions fields")

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return _train_options(options)


class ChoiceKdStep(_Strict):
    """`fslm.finetune.finetune_choice_kd`: one stage trained on choice questions of the tasks' train/dev splits, toward
    a teacher's option distribution (`options.kd`), or on the gold options alone without one (the baseline)
    (output: train/<step>/stack.yaml + adapters/ + the teacher's scores)."""

    stack: str = Field("default", description="'default', a stack YAML path, or a step's name that writes a stack")
    stage: str = Field(..., min_length=1)
    tasks: list[str] = Field(..., min_length=1, description="multiple-choice tasks with a train/dev split")
    questions: int | None = Field(None, ge=1, description="questions in all, a share per task (default: the library's)")
    options: dict[str, Any] = Field(default_factory=dict, description="fslm.finetune.TrainOptions fields")
    teacher_scores: str | None = Field(
        None,
        description="start from another choice_kd step's teacher scores (or a scores .jsonl): lines for this teacher "
        "and these exact questions are reused, the rest scored",
    )

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        if options.get("kd_level", "choice") != "choice":
            raise ValueError("a choice_kd step trains at kd_level 'choice' (leave kd_level out)")
        return _train_options(options)


class CorpusStep(_Strict):
    """`fslm.retrieve.corpus.write_corpus`: solved train/dev questions (and Alpaca) as passages, with every evaluated
    item and the head of every held-out pool left out (output: train/<step>/corpus.jsonl)."""

    sources: list[str] | None = Field(
        None,
        description="task names and/or 'alpaca' (default: every task with a "
        "train/dev split, and Alpaca; with eval_tail every task)",
    )
    alpaca: str | None = Field(None, description="Alpaca JSON/JSONL (default: the shared sample)")
    heldout_keep: int = Field(100, ge=0, description="held-out items per task kept out of the corpus")
    eval_tail: int | None = Field(
        None,
        ge=1,
        description="also each evaluation split past its first N items (an evaluation with limit <= N "
        "never reads them)",
    )


class IndexStep(_Strict):
    """`fslm.retrieve.index_passages`: a BM25 index over a corpus (output: train/<step>/index/); with `stack`, also
    that stack with its retrieve stages reading this index (train/<step>/stack.yaml), which systems and later steps
    can name like a finetune step's stack."""

    corpus: str = Field(..., min_length=1, description="a corpus step of this spec, or a passages JSONL path")
    stack: str | None = Field(None, description="a stack YAML path whose retrieve stages get this index")


class ScoringPairsStep(_Strict):
    """`fslm.finetune.pairs.write_scoring_pairs`: raw-scoring pairs for `finetune_pairs` from choice questions no
    evaluation reads, rendered as `raw-adapter` scores them (output: train/<step>/pairs.jsonl)."""

    stack: str = Field(..., min_length=1, description="a YAML path or a step; a first retrieve stage adds passages")
    records: int = Field(..., ge=1, description="questions in all, an equal share per multiple-choice task")
    tasks: list[str] | None = Field(None, description="tasks to draw from (default: evaluation.tasks)")
    seed: int = 0
    heldout_keep: int = Field(100, ge=0, description="held-out items per task never drawn")
    eval_reserve: int = Field(300, ge=1, description="evaluated items per task (the head of each split) never drawn")


def _default(options: type, name: str) -> Any:
    """A library options dataclass's default for `name`: declared once, in the library."""
    return next(f.default for f in dataclasses.fields(options) if f.name == name)


class SynthStep(_Strict):
    """`fslm.distill.synth.synth`: self-instruct, a local teacher grows Alpaca records from seed tasks (output:
    train/<step>/synth.jsonl). A run that stalls before `n` records fails the step (the file stays and resumes)."""

    n: int = Field(_default(SynthOptions, "n"), ge=1, description="records to write")
    seed: int = Field(_default(SynthOptions, "seed"), description="sampling seed")
    teacher: str | None = Field(None, description="local teacher model reference (default: the library's)")
    engine: str = Field("hf", description="the local teacher's inference engine")
    teacher_dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32", description="the local teacher's dtype (auto: bfloat16 on CPUs with native bf16, else float32)"
    )
    seeds: str | None = Field(None, description="seed tasks JSONL (default: the shared alpaca/seed_tasks.jsonl)")
    similarity: float = Field(_default(SynthOptions, "similarity"), gt=0, le=1, description="ROUGE-L dedup bound")
    seed_examples: int = Field(_default(SynthOptions, "seed_examples"), ge=1)
    generated_examples: int = Field(_default(SynthOptions, "generated_examples"), ge=0)
    per_request: int = Field(_default(SynthOptions, "per_request"), ge=1)
    requests_per_round: int = Field(_default(SynthOptions, "requests_per_round"), ge=1)
    max_new_tokens: int = Field(_default(SynthOptions, "max_new_tokens"), ge=1, description="per teacher reply")
    max_stalled_rounds: int = Field(_default(SynthOptions, "max_stalled_rounds"), ge=1)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, engine: str) -> str:
        from fslm.engine import check_backend
        from fslm.errors import FslmError

        try:
            check_backend(engine)
        except FslmError as err:
            raise ValueError(str(err)) from None
        return engine

    def options(self) -> SynthOptions:
        names = {f.name for f in dataclasses.fields(SynthOptions)}
        return SynthOptions(**{k: v for k, v in self.model_dump().items() if k in names})


class CurateStep(_Strict):
    """`fslm.distill.curate.curate`: rank records by a small model's perplexity, a quality classifier (trained on
    `labels`, or on a `judge` model's labels of a sample) or a seeded random order (the baseline at equal N) and keep
    the best (output: train/<step>/curated.jsonl, in the input's format, curated.scores.jsonl and, with a judge,
    curated.judged.jsonl)."""

    data: str = Field(..., min_length=1, description="a distill or synth step, or an Alpaca/distilled JSONL path")
    by: Literal["perplexity", "quality", "both", "random"] | None = Field(
        None, description="ranking (default: both with labels or a judge, else perplexity)"
    )
    top: int | None = Field(None, ge=1, description="keep exactly the best N")
    keep: float | None = Field(None, gt=0, le=1, description=f"or keep this fraction (default {CurateOptions.keep})")
    seed: int = Field(_default(CurateOptions, "seed"), description="by random: the order's seed; judge: its sample's")
    model: str | None = Field(None, description="scoring model (default: the library's)")
    labels: str | None = Field(None, description="good/bad labelled records that train the quality classifier")
    judge: str | None = Field(None, description="instead of labels: a larger model that labels a sample")
    judge_n: int | None = Field(
        None, ge=2, description=f"records the judge labels (default {_default(CurateOptions, 'judge_n')})"
    )
    judge_dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description=f"the judge's dtype (default {_default(CurateOptions, 'judge_dtype')})"
    )
    batch_size: int = Field(_default(CurateOptions, "batch_size"), ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> CurateStep:
        if self.top is not None and self.keep is not None:
            raise ValueError("give top or keep, not both")
        if self.judge is not None and self.labels is not None:
            raise ValueError("give labels or a judge, not both: each trains the quality classifier")
        quality = self.labels is not None or self.judge is not None
        if self.by in ("quality", "both") and not quality:
            raise ValueError(f"by {self.by} needs labels (a file of good and bad examples) or a judge model")
        if self.by == "random" and quality:
            raise ValueError(f"by random ranks by no score: leave out {'labels' if self.labels else 'judge'}")
        return self

    def options(self, labels: str | None, judge: str | None = None) -> CurateOptions:
        """The library options, with `labels` and `judge` as resolved against the spec's folder."""
        keep = self.keep if self.keep is not None else _default(CurateOptions, "keep")
        return CurateOptions(
            keep,
            self.top,
            self.by,
            labels,
            self.batch_size,
            self.seed,
            judge=judge,
            judge_n=self.judge_n if self.judge_n is not None else _default(CurateOptions, "judge_n"),
            judge_dtype=self.judge_dtype or _default(CurateOptions, "judge_dtype"),
        )


def _train_options(options: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import fields

    from fslm.finetune.options import TrainOptions  # torch-free: a spec is checked before anything loads

    known = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; TrainOptions has {sorted(known)}")
    return options


KINDS = ("distill", "synth", "curate", "finetune", "corpus", "index", "pairs", "finetune_pairs", "choice_kd")
Body = (
    DistillStep
    | SynthStep
    | CurateStep
    | FinetuneStep
    | CorpusStep
    | IndexStep
    | ScoringPairsStep
    | PairsStep
    | ChoiceKdStep
)
TRAINERS = ("finetune", "finetune_pairs", "choice_kd")  # the kinds that write a trained stack


class TrainingStep(_Strict):
    distill: DistillStep | None = None
    synth: SynthStep | None = None
    curate: CurateStep | None = None
    finetune: FinetuneStep | None = None
    corpus: CorpusStep | None = None
    index: IndexStep | None = None
    pairs: ScoringPairsStep | None = None
    finetune_pairs: PairsStep | None = None
    choice_kd: ChoiceKdStep | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TrainingStep:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def body(self) -> Body:
        return getattr(self, self.kind)

    @property
    def writes_stack(self) -> bool:
        """Whether train/<step>/stack.yaml is an output of this step (systems and steps may name it as a stack)."""
        return self.kind in TRAINERS or (self.kind == "index" and self.index.stack is not None)

    def reads(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """field -> (value, step kinds it may name) for the fields that may name another step."""
        body = self.body
        stack_kinds = (*TRAINERS, "index")
        fields: dict[str, tuple[str, tuple[str, ...]]] = {}
        if isinstance(body, (FinetuneStep, PairsStep, ScoringPairsStep, ChoiceKdStep)):
            fields["stack"] = (body.stack, stack_kinds)
        if isinstance(body, FinetuneStep):
            fields["data"] = (body.data, ("distill", "curate"))
        if isinstance(body, DistillStep) and body.data is not None:
            fields["data"] = (body.data, ("synth", "curate"))
        if isinstance(body, CurateStep):
            fields["data"] = (body.data, ("distill", "synth"))
        if isinstance(body, PairsStep):
            fields["pairs"] = (body.pairs, ("pairs",))
        if isinstance(body, ChoiceKdStep) and body.teacher_scores is not None:
            fields["teacher_scores"] = (body.teacher_scores, ("choice_kd",))
        if isinstance(body, IndexStep):
            fields["corpus"] = (body.corpus, ("corpus",))
        return fields


def record_format(training: dict[str, TrainingStep], ref: str) -> str | None:
    """What the records step `ref` writes are: "distilled", "alpaca", or None when not known before reading a file."""
    step = training.get(ref)
    if step is None:
        return None
    if step.kind == "curate":
        return record_format(training, step.curate.data)  # kept records are in their input's format
    return {"distill": "distilled", "synth": "alpaca"}.get(step.kind)


def check_formats(training: dict[str, TrainingStep]) -> None:
    """A curate step keeps its input's format: finetune reads distilled records, distill reads Alpaca ones."""
    for name, step in training.items():
        wants = {"finetune": "distilled", "distill": "alpaca"}.get(step.kind)
        data = getattr(step.body, "data", None)
        if wants is None or data not in training or training[data].kind != "curate":
            continue
        has = record_format(training, data)
        if has is not None and has != wants:
            raise ValueError(
                f"training.{name}.{step.kind}.data: curate step {data!r} keeps {has} records, and a {step.kind} "
                f"step reads {wants} ones"
            )
