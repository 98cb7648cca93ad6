"""An experiment as data: which systems, how they are trained and evaluated, what is compared, what the report shows.

The spec is YAML validated with pydantic. Every error names the field it is about (`systems.small.patch.drop.0: ...`)
and one `ConfigError` lists them all. Paths inside the spec are relative to the spec file, so a spec moves with
the stacks and data it names.

The sections (evaluation, systems, comparisons, selection, report) are in `fslm.experiment.spec_sections`; this module
holds the whole spec, the checks across its sections, and the loader (YAML, --set overrides, scales).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fslm.errors import ConfigError, FslmError
from fslm.experiment.spec_sections import (
    ComparisonSpec,
    EvaluationSpec,
    GapSpec,
    PatchSpec,
    ReportSpec,
    SelectionSpec,
    SystemSpec,
    TraceRule,
    is_stack_file,
)
from fslm.experiment.steps import TrainingStep, check_formats
from fslm.io import load_yaml, read_text

__all__ = [
    "MAX_SPEC_BYTES",
    "NAME",
    "ComparisonSpec",
    "EvaluationSpec",
    "ExperimentSpec",
    "GapSpec",
    "PatchSpec",
    "ReportSpec",
    "SelectionSpec",
    "SystemSpec",
    "TraceRule",
    "apply_overrides",
    "apply_scale",
    "format_errors",
    "is_stack_file",
    "load_spec",
    "parse_spec",
]

MAX_SPEC_BYTES = 1 << 20
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # system and step names are folder names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_names(names: list[str], field: str) -> None:
    for name in names:
        if not NAME.match(name):
            raise ValueError(
                f"{field}: {name!r} is not a usable name (letters, digits, '.', '_', '-'; it names a folder)"
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
        for i, gap in enumerate(self.report.gap_recovered):
            self._check_gap(gap, f"report.gap_recovered.{i}")
        return self

    def _check_gap(self, gap: GapSpec, where: str) -> None:
        names = {"weak": gap.weak, "strong": gap.strong, "ceiling": gap.ceiling}
        for field, name in names.items():
            self._check_system(name, f"{where}.{field}")
            if not self.systems[name].test:
                raise ValueError(f"{where}.{field}: {name!r} has test: false (held-out runs only)")
        if len(set(names.values())) != 3:
            raise ValueError(f"{where}: weak, strong and ceiling must be three different systems")

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

    def expert_delta(self, name: str) -> str | None:
        """System `name`'s TUNED:BASE with its paths relative to the spec file made absolute (None: not proxy-tuned)."""
        from fslm.collaborate.proxy_params import resolve_expert_delta

        delta = self.systems[name].expert_delta
        return None if delta is None else resolve_expert_delta(delta, self.base_dir)

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
