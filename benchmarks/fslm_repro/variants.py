"""A variant of the trained stack: some stages retrained, the others' adapters shared with `trained_stack/`.

Attempts after the first (steps `choice`, `neutral`) each retrain one or two stages. Their stack folder holds only
the new adapters and a stack.yaml whose other stages point at `../trained_stack/adapters/<stage>`, so the results
folder stays small and every variant differs from attempt 1 exactly where it says it does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from recipe import Recipe

from fslm.config import StackConfig


def package_variant(recipe: Recipe, cfg: StackConfig, work: Path, retrained: list[str], out: Path, suffix: str) -> Path:
    """Write `out/` (atomically: built beside it, then renamed) from fslm.finetune's `work/` folder."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "adapters").mkdir(parents=True)
    for stage in retrained:
        shutil.copytree(work / "adapters" / stage, tmp / "adapters" / stage)
    for name in ("train_log.json", "loss.png"):
        shutil.copyfile(work / name, tmp / name)
    stages = [
        s.model_copy(
            update={
                "adapter": f"adapters/{s.name}"
                if s.name in retrained
                else f"../{recipe.trained_dir.name}/adapters/{s.name}"
            }
        )
        for s in cfg.stages
    ]
    (tmp / "stack.yaml").write_text(
        cfg.model_copy(update={"name": f"{cfg.name}-{suffix}", "stages": stages}).to_yaml(), encoding="utf-8"
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out / "stack.yaml"
