"""The sections of an experiment spec, each validated on its own: evaluation, systems (and their patches),
comparisons, selection, report (with its gap-recovered rows). `ExperimentSpec` (fslm.experiment.spec) checks what they say about each other."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fslm.errors import FslmError

ANSWER_FORMATS = ("stack", "raw", "raw-adapter")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def is_stack_file(ref: str) -> bool:
    return ref == "default" or ref.endswith((".yaml", ".yml"))


class EvaluationSpec(_Strict):
    """What every system is evaluated on (the arguments of `fslm.evaluate.evaluate`)."""

    tasks: list[str] | Literal["all"] = Field(..., description="task names, or 'all'")
    limit: int | None = Field(None, ge=1, description="first N items per task (None: all)")
    split: Literal["test", "heldout"] = Field("test", description="test: each task's evaluation split")
    num_fewshot: int = Field(0, ge=0, description="few-shot examples for model systems (stacks run zero-shot)")
    gen_max_tokens: int = Field(256, ge=1, le=4096, description="generation tasks (gsm8k): new-token budget")
    batch_size: int = Field(32, ge=1, le=1024, description="items per batch and per resumable write")
    metrics: list[str] | None = Field(
        None, description="text metrics of generation tasks (fslm.evaluate.metrics: em, rougeL, bleu, minilm, ...)"
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str] | None) -> list[str] | None:
        from fslm.evaluate.metrics import parse_metrics

        if metrics is None:
            return None
        try:
            return parse_metrics(metrics)  # canonical names (rouge-l -> rougeL); unknown ones list the known
        except FslmError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _known_tasks(self) -> EvaluationSpec:
        from fslm.tasks import get_task

        if isinstance(self.tasks, str):
            return self
        if not self.tasks:
            raise ValueError("tasks: give at least one task (or 'all')")
        for i, task in enumerate(self.tasks):
            try:
                get_task(task)
            except FslmError as err:
                raise ValueError(f"tasks.{i}: {err}") from None
            if task in self.tasks[:i]:
                raise ValueError(f"tasks.{i}: {task!r} is listed twice")
        if self.split == "heldout" and self.num_fewshot:
            raise ValueError(
                "num_fewshot: held-out items are evaluated zero-shot (few-shot examples come from the same splits)"
            )
        return self

    @property
    def task_names(self) -> list[str]:
        from fslm.tasks import list_tasks

        return list_tasks() if self.tasks == "all" else list(self.tasks)


class PatchSpec(_Strict):
    """How a variant differs from its stack, applied in this order: stage fields, adapters, drop, keep."""

    name: str | None = Field(None, min_length=1, description="the variant stack's name (default: the system's name)")
    base_model: str | None = Field(None, min_length=1, description="the same stages on another base model")
    stages: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="stage -> fields to set (instruction, template, sees, generation, label, retrieve, ...); "
        "a dict value is merged one level deep; null removes a field",
    )
    adapters: dict[str, str | None] = Field(
        default_factory=dict, description="stage -> adapter folder (relative to the spec file), or null to remove it"
    )
    drop: list[str] = Field(default_factory=list, description="stages removed (later stages stop seeing them)")
    keep: list[str] | None = Field(None, description="only these stages (the final stage must be among them)")


class SystemSpec(_Strict):
    """One system: a model alone, a stack, or a variant of another system's stack (`from` + `patch`)."""

    model: str | None = Field(None, min_length=1, description="a model reference, evaluated alone on raw prompts")
    stack: str | None = Field(
        None, min_length=1, description="'default', a stack YAML path, or the name of a finetune step of this spec"
    )
    from_: str | None = Field(None, alias="from", description="another system of this spec whose stack to start from")
    patch: PatchSpec | None = None
    adapters: bool = Field(True, description="false: the same stack with every LoRA adapter off")
    answer_format: Literal["stack", "raw", "raw-adapter"] = "stack"
    num_fewshot: int | None = Field(None, ge=0, description="model systems: overrides evaluation.num_fewshot")
    dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description="model systems: the weights' dtype (default float32; a stack gives its own in its YAML)"
    )
    label: str | None = Field(None, description="how RESULTS.md describes it")
    test: bool = Field(True, description="false: a selection candidate evaluated on held-out items only")
    expert_delta: str | None = Field(
        None,
        min_length=1,
        description="model systems: 'TUNED:BASE' (each MODEL[+ADAPTER_DIR], paths relative to the spec file): the "
        "model proxy-tuned by that pair, options scored under the fused distribution",
    )
    delta_alpha: float = Field(1.0, description="weight of expert_delta's shift (0: the model alone)")

    @model_validator(mode="after")
    def _one_source(self) -> SystemSpec:
        given = [f for f, v in (("model", self.model), ("stack", self.stack), ("from", self.from_)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of model, stack, from (got {', '.join(given) or 'none'})")
        if self.model is not None:
            extra = [f for f in ("patch", "answer_format") if f in self.model_fields_set]
            extra += ["adapters"] if not self.adapters else []
            if extra:
                raise ValueError(f"{', '.join(extra)}: apply to stack systems only; a model system has no stages")
            self._check_delta()
        elif self.dtype is not None:
            raise ValueError("dtype: applies to model systems only; a stack gives its dtype in its YAML (dtype: ...)")
        elif self.expert_delta is not None or "delta_alpha" in self.model_fields_set:
            raise ValueError("expert_delta, delta_alpha: proxy-tuning applies to model systems only (model: ...)")
        elif self.num_fewshot:
            raise ValueError("num_fewshot: stacks are evaluated zero-shot; few-shot applies to model systems only")
        return self

    def _check_delta(self) -> None:
        from fslm.collaborate.proxy_params import ProxyTuneParams, parse_expert_delta

        if self.expert_delta is None:
            if "delta_alpha" in self.model_fields_set:
                raise ValueError("delta_alpha: weighs expert_delta; give expert_delta: TUNED:BASE too")
            return
        try:
            parse_expert_delta(self.expert_delta)
            ProxyTuneParams(alpha=self.delta_alpha)
        except FslmError as err:
            raise ValueError(
                str(err).replace("--expert-delta", "expert_delta").replace("--delta-alpha", "delta_alpha")
            ) from None

    @property
    def is_model(self) -> bool:
        return self.model is not None


class ComparisonSpec(_Strict):
    """acc(a) - acc(b) per task and macro with a paired-bootstrap 95% CI (`fslm.evaluate.compare`)."""

    a: str
    b: str
    heldout: bool = Field(False, description="compare the two systems' held-out (selection) runs instead")

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)):
            if len(data) != 2:
                raise ValueError(f"a pair [A, B] has two system names, got {len(data)}")
            return {"a": data[0], "b": data[1]}
        return data


class SelectionSpec(_Strict):
    """The rule that picks one system on held-out items, fixed before any held-out number is seen."""

    among: list[str] = Field(..., min_length=1, description="candidate systems, in order of preference on a tie")
    context: list[str] = Field(
        default_factory=list, description="also run on held-out items, for reference; never chosen"
    )
    limit: int | None = Field(50, ge=1, description="held-out items per task")
    rule: Literal["best_heldout_macro"] = "best_heldout_macro"

    @property
    def systems(self) -> list[str]:
        return [*self.among, *self.context]


class TraceRule(_Strict):
    """Example traces for RESULTS.md, chosen by rule (never by hand): the first `count` items, in evaluation order,
    that match."""

    system: str
    count: int = Field(2, ge=1, le=20)
    task: str | None = None
    where: Literal["any", "correct", "wrong"] = "any"
    versus: str | None = Field(None, description="only items where this system's outcome differs")


class GapSpec(_Strict):
    """Performance gap recovered (Burns et al., 2023): how much of the gap from `weak` to `ceiling` the `strong` system
    closes, (acc(strong) - acc(weak)) / (acc(ceiling) - acc(weak)), per task and macro (`fslm.evaluate.stats`)."""

    weak: str = Field(..., description="the weak supervisor (PGR 0)")
    strong: str = Field(..., description="the strong student trained on the weak supervisor's labels")
    ceiling: str = Field(..., description="the strong student trained on gold labels (PGR 1)")


class ReportSpec(_Strict):
    title: str | None = None
    file: str = Field("RESULTS.md", pattern=r"^[^/\\]+\.md$", description="the report's file name in the out folder")
    pareto: bool = Field(True, description="pareto.png: macro accuracy vs seconds per item")
    traces: list[TraceRule] = Field(default_factory=list)
    gap_recovered: list[GapSpec] = Field(default_factory=list, description="performance gap recovered, one row each")
    notes: str | None = Field(
        None,
        description="a markdown file (relative to the spec) copied into the report: the attempt log a person keeps",
    )
