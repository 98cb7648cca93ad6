"""An experiment as data: which systems, how they are trained and evaluated, what is compared, what the report shows.

The spec is YAML validated with pydantic. Every error names the field it is about (`systems.small.patch.drop.0: ...`)
and one `ConfigError` lists them all. Paths inside the spec are relative to the spec file, so a spec moves with
the stacks and data it names.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fslm.errors import ConfigError, FslmError
from fslm.experiment.steps import TrainingStep, check_formats
from fslm.io import load_yaml, read_text

MAX_SPEC_BYTES = 1 << 20
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # system and step names are folder names
ANSWER_FORMATS = ("stack", "raw", "raw-adapter")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_names(names: list[str], field: str) -> None:
    for name in names:
        if not NAME.match(name):
            raise ValueError(
                f"{field}: {name!r} is not a usable name (letters, digits, '.', '_', '-'; it names a folder)"
            )


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
    label: str | None = Field(None, description="how RESULTS.md describes it")
    test: bool = Field(True, description="false: a selection candidate evaluated on held-out items only")

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
        elif self.num_fewshot:
            raise ValueError("num_fewshot: stacks are evaluated zero-shot; few-shot applies to model systems only")
        return self

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


class ReportSpec(_Strict):
    title: str | None = None
    file: str = Field("RESULTS.md", pattern=r"^[^/\\]+\.md$", description="the report's file name in the out folder")
    pareto: bool = Field(True, description="pareto.png: macro accuracy vs seconds per item")
    traces: list[TraceRule] = Field(default_factory=list)
    notes: str | None = Field(
        None,
        description="a markdown file (relative to the spec) copied into the report: the attempt log a person keeps",
    )


class ExperimentSpec(_Strict):
    name: str = Field(..., min_length=1)
    description: str = ""
    out: str | None = Field(None, description="results folder, relative to the spec file (default: <spec stem>/)")
    stage_cache: bool = Field(False, description="stacks share generated stage texts (fslm.stack_cache)")
    evaluation: EvaluationSpec
    systems: dict[str, SystemSpec] = Field(..., min_length=1)
    training: dict[str, TrainingStep] = Field(default_factory=dict)
    comparisons: list[ComparisonSpec] = Field(default_factory=list)
    selection: SelectionSpec | None = None
    report: ReportSpec = Field(default_factory=ReportSpec)
    scale: str | None = Field(None, description="the entry of `scales` this run applies (set by --set scale=NAME)")
    scales: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="name -> dotted spec keys and values (like --set): smaller or other scales of the same experiment",
    )

    # Where the spec was read from; relative paths resolve against its folder. Not part of the YAML.
    source_path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _references(self) -> ExperimentSpec:
        _check_names(list(self.systems), "systems")
        if "selected" in self.systems:
            raise ValueError("systems.selected: 'selected' is reserved for the selection's choice; rename the system")
        _check_names(list(self.training), "training")
        clash = sorted(set(self.systems) & set(self.training))
        if clash:
            raise ValueError(f"training: {clash} are also system names; give steps and systems distinct names")
        self._check_training()
        self._check_alpaca_training()
        for name, system in self.systems.items():
            where = f"systems.{name}"
            if system.from_ is not None and system.from_ not in self.systems:
                raise ValueError(f"{where}.from: {system.from_!r} is not a system of this spec")
            if system.stack is not None:
                self._check_stack_ref(system.stack, f"{where}.stack")
            if self.evaluation.split == "heldout" and self.fewshot(name):
                raise ValueError(f"{where}.num_fewshot: held-out items are evaluated zero-shot")
        self._check_from_cycles()
        for i, pair in enumerate(self.comparisons):
            for side in ("a", "b"):
                self._check_system(getattr(pair, side), f"comparisons.{i}.{side}", allow_selected=True)
            if pair.a == pair.b:
                raise ValueError(f"comparisons.{i}: compares {pair.a!r} with itself")
            for side in ("a", "b") if not pair.heldout else ():
                name = getattr(pair, side)
                if name in self.systems and not self.systems[name].test:
                    raise ValueError(f"comparisons.{i}.{side}: {name!r} has test: false (held-out runs only)")
            if pair.heldout:
                among = self.selection.systems if self.selection is not None else []
                for side in ("a", "b"):
                    if getattr(pair, side) not in [*among, "selected"]:
                        raise ValueError(
                            f"comparisons.{i}.{side}: heldout compares held-out runs, and "
                            f"{getattr(pair, side)!r} is not in selection.among or selection.context"
                        )
        if self.selection is not None:
            for field in ("among", "context"):
                for i, name in enumerate(getattr(self.selection, field)):
                    where = f"selection.{field}.{i}"
                    self._check_system(name, where)
                    if self.fewshot(name):
                        raise ValueError(f"{where}: {name!r} is few-shot; held-out items are evaluated zero-shot")
            if len(set(self.selection.systems)) != len(self.selection.systems):
                raise ValueError("selection: a system is listed twice in among and context")
        for i, rule in enumerate(self.report.traces):
            self._check_system(rule.system, f"report.traces.{i}.system", allow_selected=True)
            if rule.versus is not None:
                self._check_system(rule.versus, f"report.traces.{i}.versus", allow_selected=True)
            if rule.task is not None and rule.task not in self.evaluation.task_names:
                raise ValueError(f"report.traces.{i}.task: {rule.task!r} is not among evaluation.tasks")
        return self

    def _check_system(self, name: str, where: str, allow_selected: bool = False) -> None:
        if name in self.systems:
            return
        if allow_selected and name == "selected":
            if self.selection is None:
                raise ValueError(f"{where}: 'selected' names the selection's choice, and this spec has no selection")
            return
        raise ValueError(f"{where}: {name!r} is not a system of this spec (systems: {', '.join(self.systems)})")

    def _check_stack_ref(self, ref: str, where: str) -> None:
        if is_stack_file(ref):
            return
        step = self.training.get(ref)
        if step is None or not step.writes_stack:
            raise ValueError(
                f"{where}: {ref!r} is not 'default', a .yaml path, or a step of this spec that writes a stack "
                "(finetune, finetune_pairs, choice_kd, index with a stack)"
            )

    def _check_training(self) -> None:
        for name, step in self.training.items():
            where = f"training.{name}.{step.kind}"
            for field, (value, kinds) in step.reads().items():
                if field == "stack":
                    self._check_stack_ref(value, f"{where}.stack")
                elif not value.endswith((".jsonl", ".json")):
                    other = self.training.get(value)
                    if other is None or other.kind not in kinds:
                        raise ValueError(
                            f"{where}.{field}: {value!r} is not a {' or '.join(kinds)} step of this spec or a file path"
                        )
            if step.kind in ("pairs", "choice_kd") and step.body.tasks is not None:
                from fslm.tasks import get_task

                for i, task in enumerate(step.body.tasks):
                    try:
                        get_task(task)
                    except FslmError as err:
                        raise ValueError(f"{where}.tasks.{i}: {err}") from None
        for name in self.training:  # steps that feed each other must not form a loop
            self._check_step_loop(name, [name])
        check_formats(self.training)

    def _check_alpaca_training(self) -> None:
        """The alpaca task scores the tail of the shared Alpaca sample: no distill step may read that far."""
        if "alpaca" not in self.evaluation.task_names:
            return
        from fslm.tasks.alpaca import training_overlap

        for name, step in self.training.items():
            if step.kind == "distill":
                body = step.body
                problem = training_overlap(None if body.data is None else self.resolve(body.data), body.limit)
                if problem:
                    raise ValueError(f"training.{name}.distill: {problem}")

    def step_deps(self, name: str) -> list[str]:
        """The steps of this spec that step `name` reads."""
        return [v for v, _ in self.training[name].reads().values() if v in self.training]

    def _check_step_loop(self, name: str, path: list[str]) -> None:
        for dep in self.step_deps(name):
            if dep in path:
                raise ValueError(f"training.{path[0]}: it reads its own output ({' -> '.join([*path, dep])})")
            self._check_step_loop(dep, [*path, dep])

    def _check_from_cycles(self) -> None:
        for name in self.systems:
            seen, current = [name], self.systems[name]
            while current.from_ is not None:
                if current.from_ in seen:
                    raise ValueError(f"systems.{name}.from: a loop ({' -> '.join([*seen, current.from_])})")
                seen.append(current.from_)
                current = self.systems[current.from_]

    def fewshot(self, name: str) -> int:
        """Few-shot examples system `name` is evaluated with (stacks: always 0)."""
        system = self.systems[name]
        if not system.is_model:
            return 0
        return self.evaluation.num_fewshot if system.num_fewshot is None else system.num_fewshot

    @property
    def base_dir(self) -> Path:
        return self.source_path.parent if self.source_path is not None else Path.cwd()

    def resolve(self, path: str) -> Path:
        """A path from the spec: relative to the spec file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def out_dir(self) -> Path:
        if self.out is not None:
            return self.resolve(self.out)
        stem = self.source_path.stem if self.source_path is not None else self.name
        return self.base_dir / stem

    def test_split(self) -> str | None:
        """The `split` argument of `evaluate` for the evaluation runs (None: each task's evaluation split)."""
        return None if self.evaluation.split == "test" else "heldout"


def format_errors(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid experiment spec"]
    for problem in err.errors():
        loc = ".".join(str(p) for p in problem["loc"])
        msg = problem["msg"].removeprefix("Value error, ")
        got = problem.get("input")
        shown = (
            ""
            if isinstance(got, (dict, list)) or got is None or problem["type"] == "value_error"
            else f" (got {got!r})"
        )
        lines.append(f"  {loc}: {msg}{shown}" if loc else f"  {msg}")
    return "\n".join(lines)


def parse_spec(data: object, where: str = "<spec>", source_path: Path | None = None) -> ExperimentSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with name, evaluation and systems at the top level")
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, where)) from None
    spec.source_path = source_path
    return spec


def apply_overrides(data: object, overrides: Mapping[str, Any], where: str) -> object:
    """Set dotted keys (`evaluation.limit`, `systems.base.model`) in the spec's data before it is validated: one spec
    file, several scales (`--set evaluation.limit=40 --set out=runs/pilot`)."""
    if not overrides:
        return data
    if not isinstance(data, dict):
        return data  # parse_spec reports it
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        parts, node, walked = key.split("."), data, []
        while len(parts) > 1:
            take = _existing_key(node, parts)  # names may hold dots (a system called model-qwen2.5-coder-0.5b)
            if take == len(parts):
                break
            part = ".".join(parts[:take])
            walked.append(part)
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{where}: --set {key}: {'.'.join(walked)} is not a mapping")
            node, parts = child, parts[take:]
        node[".".join(parts)] = value
    return data


def _existing_key(node: dict, parts: list[str]) -> int:
    """How many of `parts` (joined by dots) name a key of `node`: the longest that does, else 1."""
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in node:
            return n
    return 1


def apply_scale(data: object, where: str) -> object:
    """The spec's data with its chosen scale (`scale: NAME`, an entry of `scales`) applied: one file, several sizes
    of one experiment. A --set of a key the scale also sets wins (the scale is applied first, then --set again)."""
    if not isinstance(data, dict) or data.get("scale") is None:
        return data
    name, scales = data["scale"], data.get("scales") or {}
    if not isinstance(scales, dict) or name not in scales:
        known = ", ".join(scales) if isinstance(scales, dict) and scales else "none"
        raise ConfigError(f"{where}: scale: {name!r} is not an entry of scales (scales: {known})")
    if not isinstance(scales[name], dict):
        raise ConfigError(f"{where}: scales.{name}: expected a mapping of dotted keys to values")
    return apply_overrides(data, scales[name], f"{where}: scales.{name}")


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ExperimentSpec:
    """Read and validate an experiment spec file (at most MAX_SPEC_BYTES, parsed by fslm.io's bounded safe loader),
    with `overrides` (dotted key -> value) applied first; when they (or the file) name a `scale`, that scale's
    overrides apply, then `overrides` again on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: experiment spec not found")
    data = load_yaml(read_text(path, limit=MAX_SPEC_BYTES, error=ConfigError), str(path), error=ConfigError)
    data = apply_overrides(data, overrides or {}, str(path))
    data = apply_overrides(apply_scale(data, str(path)), overrides or {}, str(path))
    return parse_spec(data, str(path), path.resolve())
