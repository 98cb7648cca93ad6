"""Steps `distill` and `finetune`, each a thin layer over the resumable library API it names.

distill  -> <out>/distilled.jsonl (fslm.distill; resumes per batch)         + <out>/distill.json
finetune -> <work>/finetune/ (fslm.finetune; resumes from checkpoints)     + <out>/trained_stack/ (stack.yaml, fp16
            adapters <= the size budget, train_log.json, loss.png)         + <out>/finetune.json
"""

from __future__ import annotations

import shutil
from pathlib import Path

from recipe import Recipe, read_json
from teachers_step import chosen_teacher

from fslm.distill import DistillOptions, distill, load_instructions, read_distilled
from fslm.engine import load_engine
from fslm.errors import ConfigError
from fslm.evaluate.store import write_json
from fslm.finetune import ALL_PROJECTIONS, TrainOptions, finetune, lora_param_count
from fslm.teachers import LocalTeacher

RANKS = (64, 32, 16, 8, 4, 2, 1)  # tried largest first; the first whose fp16 adapters fit the budget is used


# ---- distill ---------------------------------------------------------------------------------------------------------
def distilled_path(recipe: Recipe) -> Path:
    """Kept with the results, not in --work: hours of teacher time that other people can train from, and that
    survives losing the cache (it did once, with 1,704 records in it)."""
    return recipe.out / "distilled.jsonl"


def distill_done(recipe: Recipe) -> bool:
    path = distilled_path(recipe)
    if not path.is_file() or read_json(recipe.out / "distill.json") is None:
        return False
    items, _ = load_instructions(recipe.data, recipe.distill_records)
    have = {r["id"] for r in read_distilled(path)}
    return all(it.id in have for it in items)


def run_distill(recipe: Recipe, log=print) -> dict:
    cfg = recipe.stack_config()
    ref = chosen_teacher(recipe)
    log(f"  distilling {recipe.distill_records} records with {ref} -> {distilled_path(recipe)}")
    report = distill(
        cfg,
        recipe.data,
        distilled_path(recipe),
        teacher=lambda: LocalTeacher.load(ref, dtype=recipe.teacher_dtype),
        options=DistillOptions(limit=recipe.distill_records, batch_size=recipe.distill_batch),
        progress=lambda done, total: log(f"    {done}/{total} records"),
    )
    data = {
        **report.to_dict(),
        "teacher_ref": ref,
        "teacher_dtype": recipe.teacher_dtype,
        "path": str(distilled_path(recipe)),
    }
    data.pop("seconds")  # this session's time only; steps.json has the step's total
    write_json(recipe.out / "distill.json", data)
    return data


# ---- finetune --------------------------------------------------------------------------------------------------------
def adapter_file_bytes(engine, rank: int, targets) -> int:
    """Exact size of one saved adapter at this rank, fp16: adapter_model.safetensors + adapter_config.json, both
    serialized (in memory / a temp folder), not estimated and not trained."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save

    peft_model = get_peft_model(
        engine.base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), task_type="CAUSAL_LM")
    )
    try:
        tensors = {k: v.to(torch.float16).contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
        with tempfile.TemporaryDirectory() as tmp:
            peft_model.peft_config["default"].save_pretrained(tmp)
            config_bytes = sum(f.stat().st_size for f in Path(tmp).iterdir())
        return len(save(tensors, metadata={"format": "pt"})) + config_bytes
    finally:
        peft_model.unload()  # the shared base goes back to plain weights (as fslm.finetune does)


def choose_rank(engine, n_adapters: int, budget: int, targets=ALL_PROJECTIONS) -> tuple[int, int]:
    """Largest rank (LoRA on every projection) whose n fp16 adapters (weights + config files) fit the budget.
    Returns (rank, total bytes)."""
    for rank in RANKS:
        total = n_adapters * adapter_file_bytes(engine, rank, targets)
        if total <= budget:
            return rank, total
    raise ConfigError(
        f"even rank 1 LoRA adapters exceed the {budget} byte budget; raise --adapter-budget or target fewer modules"
    )


def adapters_bytes(folder: Path) -> dict[str, int]:
    return {
        d.name: sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        for d in sorted((folder / "adapters").iterdir())
        if d.is_dir()
    }


def finetune_done(recipe: Recipe) -> bool:
    info = read_json(recipe.out / "finetune.json")
    return (
        info is not None
        and (recipe.trained_dir / "stack.yaml").is_file()
        and set(adapters_bytes(recipe.trained_dir)) == {s.name for s in recipe.stack_config().stages}
    )


def run_finetune(recipe: Recipe, log=print) -> dict:
    cfg = recipe.stack_config()
    work = recipe.work / "finetune"
    engine = load_engine(cfg.base_model, dtype="float32")
    plan = read_json(work / "rank.json")  # the choice is fixed once made, so a resumed run trains the same adapters
    if plan is None:
        rank, estimate = choose_rank(engine, len(cfg.stages), recipe.adapter_budget_bytes)
        plan = {"rank": rank, "alpha": 2 * rank, "targets": list(ALL_PROJECTIONS), "estimated_bytes": estimate}
        write_json(work / "rank.json", plan)
    log(
        f"  LoRA rank {plan['rank']} on {','.join(plan['targets'])} (fp16 storage, budget {recipe.adapter_budget_bytes} bytes)"
    )
    options = TrainOptions(
        rank=plan["rank"],
        alpha=plan["alpha"],
        targets=tuple(plan["targets"]),
        epochs=recipe.epochs,
        save_dtype="float16",
    )
    report = finetune(
        cfg,
        distilled_path(recipe),
        work,
        options,
        engine=engine,
        progress=lambda stage, step, total, loss: (
            log(f"    {stage} {step}/{total} loss {loss:.3f}") if step % 10 == 0 or step == total else None
        ),
    )
    sizes = adapters_bytes(work)
    if sum(sizes.values()) > recipe.adapter_budget_bytes:
        raise ConfigError(
            f"{work}/adapters: {sum(sizes.values())} bytes exceed the {recipe.adapter_budget_bytes} byte budget"
        )
    if recipe.trained_dir.exists():
        shutil.rmtree(recipe.trained_dir)
    tmp = recipe.trained_dir.with_name(".trained_stack.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("stack.yaml", "train_log.json", "loss.png"):
        shutil.copyfile(work / name, tmp / name)
    shutil.copytree(work / "adapters", tmp / "adapters")
    tmp.rename(recipe.trained_dir)
    data = {
        **plan,
        "lora_params_per_adapter": lora_param_count(engine.base, plan["rank"], plan["targets"]),
        "adapter_bytes": sizes,
        "adapter_bytes_total": sum(sizes.values()),
        "budget_bytes": recipe.adapter_budget_bytes,
        "epochs": recipe.epochs,
        "records": report.records,
        "stages": report.stages,
    }
    write_json(recipe.out / "finetune.json", data)
    return data
