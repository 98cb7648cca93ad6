"""`--reuse FILE --redo STAGE`: keep an earlier distilled file's targets for every stage not redistilled."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fslm.config import StackConfig
from fslm.distill.store import read_distilled
from fslm.errors import ConfigError


def load_reuse(cfg: StackConfig, reuse: str | Path | None, redo: Sequence[str]) -> dict[str, dict[str, str]]:
    """id -> the reused targets (every stage not in `redo`) of each record the `reuse` file kept."""
    if reuse is None:
        if redo:
            raise ConfigError("--redo needs --reuse: the distilled file whose other stages' targets are kept")
        return {}
    names = [s.name for s in cfg.stages]
    unknown = [n for n in redo if n not in names]
    if unknown or not redo:
        raise ConfigError(
            f"--redo: expected one or more of the stages of {cfg.name!r} {names}, got {list(redo) or 'none'}"
        )
    path = Path(reuse)
    if not path.is_file():
        raise ConfigError(f"--reuse {path}: no such distilled file")
    keep = [n for n in names if n not in redo]
    reused: dict[str, dict[str, str]] = {}
    for rec in read_distilled(path):
        targets = rec.get("targets") or {}
        if rec.get("kept") and all(isinstance(targets.get(n), str) for n in keep):
            reused[rec["id"]] = {n: targets[n] for n in keep}
    return reused
