"""Checks on a stack before anything loads: adapter and index folders, stage models, and the stacks and calibration
files its escalate stages name, recursively (a stack that escalates to another is checked with it). Separate from
fslm.config, which only parses and validates one file, so the recursion over files lives in one module.
"""

from __future__ import annotations

from pathlib import Path

from fslm.config import StackConfig, load_stack_config
from fslm.errors import ConfigError, FslmError, ModelFileError
from fslm.models import check_adapter_folder, resolve
from fslm.retrieve.index import MANIFEST
from fslm.retrieve.recipe import RECIPE
from fslm.stages.calibration import SIGNAL_OF_KIND, Calibration


def check_adapters(cfg: StackConfig, _seen: frozenset[Path] = frozenset()) -> None:
    """Fail early, naming the stage, when an adapter or retrieval index folder is missing or incomplete, or an
    escalation's stack or calibration file (check_targets, which checks the escalation stack's own folders too)."""
    check_targets(cfg, _seen)
    for i, stage in enumerate(cfg.stages):
        where = cfg.source_path or "<config>"
        index = cfg.index_path(stage)
        if index is not None and not (index / MANIFEST).is_file() and not (index / RECIPE).is_file():
            raise ConfigError(
                f"{where}: stages.{i}.retrieve.index: no retrieval index in {index} (build one with "
                "`fslm retrieve corpus` then `fslm retrieve index`)"
            )
        path = cfg.adapter_path(stage)
        if path is None or cfg.stage_endpoint(stage) is not None:  # an endpoint's adapters are on its server
            continue
        try:
            check_adapter_folder(path)
        except ModelFileError as err:
            raise ConfigError(f"{where}: stages.{i}.adapter: {err}") from None


def check_models(cfg: StackConfig) -> None:
    """Every stage `model:` names a model on this machine (or the hub); nothing is loaded. A stage on an endpoint
    names a model its server serves: not checked here (no request is sent)."""
    for i, stage in enumerate(cfg.stages):
        if stage.model is None or stage.model == cfg.base_model or cfg.stage_endpoint(stage) is not None:
            continue
        try:
            resolve(stage.model)
        except FslmError as err:
            raise ConfigError(f"{cfg.source_path or '<config>'}: stages.{i}.model: {err}") from None


def validate_stack(path: str | Path) -> StackConfig:
    """Python twin of `fslm stack validate`: schema, the stage graph (references, cycles, conditions), templates,
    stage models, adapter and index folders."""
    cfg = load_stack_config(path)
    check_models(cfg)
    check_adapters(cfg)
    check_targets(cfg, models=True)  # the models of the stacks it escalates to
    return cfg


def load_threshold(cfg, stage) -> float:
    """The stage's threshold: its number, or the one in its calibration file (whose signal must fit the stage)."""
    esc = stage.escalate
    if esc.threshold is not None:
        return esc.threshold
    where = f"{cfg.source_path or '<config>'}: stages.{cfg.index_of(stage.name)}.escalate.calibration"
    try:
        cal = Calibration.load(cfg.escalate_path(stage, "calibration"))
    except FslmError as err:
        raise ConfigError(f"{where}: {err}") from None
    kind = cfg.stage(esc.confidence_of).kind
    signal = SIGNAL_OF_KIND.get(kind)
    if signal != cal.signal:
        raise ConfigError(
            f"{where}: calibrated on the {cal.signal!r} signal, but {esc.confidence_of!r} is a {kind} stage (its "
            f"confidence is the {signal!r} signal); calibrate with --signal {signal}"
        )
    return float(cal.threshold)


def check_targets(cfg, seen: frozenset[Path] = frozenset(), *, models: bool = False) -> None:
    """Every escalate stage's calibration file reads, and its stack file exists, is valid, answers option prompts with
    option scores when the small answer does, and does not lead back to a stack on the way (a cycle of files)."""
    here = seen | ({cfg.source_path.resolve()} if cfg.source_path is not None else set())
    for i, stage in enumerate(cfg.stages):
        if stage.escalate is None:
            continue
        load_threshold(cfg, stage)
        path = cfg.escalate_path(stage, "stack")
        if path is None:
            continue
        where = f"{cfg.source_path or '<config>'}: stages.{i}.escalate.stack"
        if not path.is_file():
            raise ConfigError(f"{where}: no stack file at {path}")
        if path.resolve() in here:
            raise ConfigError(f"{where}: {path} leads back to a stack that escalates to it (a cycle of stack files)")
        nested = load_stack_config(path)
        if cfg.scores_options(stage) and not nested.scores_options(nested.answer_stage_for("has_options")):
            raise ConfigError(
                f"{where}: {cfg.stage(stage.escalate.answer).name!r} scores options, but stack {nested.name!r} "
                "answers prompts with options by generating; escalate to a stack whose answer scores them"
            )
        check_adapters(nested, here)
        if models:
            check_models(nested)
            check_targets(nested, here, models=True)
