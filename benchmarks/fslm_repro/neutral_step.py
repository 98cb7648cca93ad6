"""Step `neutral` (attempt 3): the reasoning stage writes notes that do not pick an answer, learned from a teacher
that never saw the gold.

Why (attempt 1's traces, RESULTS.md "Does the answer stage follow the earlier stages?"): the reasoning teacher was
shown the gold answer, so in training every draft was right, and the answer stage learned to copy the draft. The
135M student's drafts at test time name a wrong option more often than a right one, and the answer stage follows
them. Here the reasoning role is redesigned: the teacher is NOT shown the gold (it writes what the student could
write) and is asked how the facts bear on the question without stating an answer; the student's instruction says
the same. Only the reasoning texts are redistilled (`fslm.distill` with reuse/redo: intent and facts targets are
attempt 1's); the reasoning and answer stages are retrained (the answer stage sees the new notes), intent and facts
keep attempt 1's adapters.

work/neutral/distilled.jsonl   (fslm.distill, resumes per batch)
work/finetune-neutral/         (fslm.finetune of reasoning + answer; resumes from checkpoints)
out/trained_stack_neutral/     stack.yaml (intent/facts adapters from trained_stack/) + the two new adapters
out/neutral.json               what was redistilled and how training went
"""

from __future__ import annotations

from pathlib import Path

from pipeline import distilled_path
from recipe import Recipe, read_json
from teachers_step import chosen_teacher
from variants import package_variant

from fslm.config import StackConfig
from fslm.distill import DistillOptions, distill, read_distilled
from fslm.engine import load_engine
from fslm.errors import ConfigError
from fslm.evaluate.store import write_json
from fslm.finetune import TrainOptions, finetune
from fslm.teachers import LocalTeacher

DRAFT, FINAL = "reasoning", "answer"
DRAFT_INSTRUCTION = (
    "Think step by step: in two short sentences at most, say how the key facts bear on the question. "
    "Do not give the final answer."
)
DRAFT_TEACHER_PROMPT = (
    "Question: {prompt}\n\nKey facts: {facts}\n\nIn at most two short sentences (40 words in all), "
    "explain how these facts bear on the question. Do not state or choose a final answer."
)
FINAL_INSTRUCTION = (
    "Give the final answer to the question in one or two clear sentences. Use the notes only where they help."
)


def neutral_config(cfg: StackConfig) -> StackConfig:
    """The recipe's stack with attempt 3's reasoning role (and the answer stage told the notes are only notes)."""
    names = [s.name for s in cfg.stages]
    if DRAFT not in names or names[-1] != FINAL:
        raise ConfigError(
            f"step 'neutral' needs a stack with a {DRAFT!r} stage and a final {FINAL!r} stage; {cfg.name!r} has {names}"
        )
    changes = {
        DRAFT: {"instruction": DRAFT_INSTRUCTION, "teacher_prompt": DRAFT_TEACHER_PROMPT},
        FINAL: {"instruction": FINAL_INSTRUCTION},
    }
    return cfg.model_copy(update={"stages": [s.model_copy(update=changes.get(s.name, {})) for s in cfg.stages]})


def neutral_dir(recipe: Recipe) -> Path:
    return recipe.out / "trained_stack_neutral"


def done(recipe: Recipe) -> bool:
    return not recipe.neutral or (
        read_json(recipe.out / "neutral.json") is not None and (neutral_dir(recipe) / "stack.yaml").is_file()
    )


def run(recipe: Recipe, log=print) -> dict:
    if not recipe.neutral:
        return {}
    if not (recipe.trained_dir / "stack.yaml").is_file():
        raise ConfigError(f"no {recipe.trained_dir / 'stack.yaml'}: run the 'finetune' step first")
    cfg = neutral_config(recipe.stack_config())
    data_path = recipe.work / "neutral" / "distilled.jsonl"
    ref = chosen_teacher(recipe)
    log(f"  redistilling the {DRAFT} stage without the gold ({ref}) -> {data_path}")
    report = distill(
        cfg,
        recipe.data,
        data_path,
        teacher=lambda: LocalTeacher.load(ref, dtype=recipe.teacher_dtype),
        options=DistillOptions(
            limit=recipe.distill_records, batch_size=recipe.distill_batch, reuse=distilled_path(recipe), redo=[DRAFT]
        ),
        progress=lambda n, total: log(f"    {n}/{total} records"),
    )
    reused = sum(bool(r.get("reused")) for r in read_distilled(data_path))

    plan = read_json(recipe.work / "finetune" / "rank.json")  # attempt 1's rank and targets: same adapter budget
    options = TrainOptions(
        rank=plan["rank"],
        alpha=plan["alpha"],
        targets=tuple(plan["targets"]),
        epochs=recipe.epochs,
        save_dtype="float16",
    )
    work = recipe.work / "finetune-neutral"
    tuned = finetune(
        cfg,
        data_path,
        work,
        options,
        stages=[DRAFT, FINAL],
        engine=load_engine(cfg.base_model, dtype="float32"),
        progress=lambda stage, step, total, loss: (
            log(f"    {stage} {step}/{total} loss {loss:.3f}") if step % 10 == 0 or step == total else None
        ),
    )
    package_variant(recipe, cfg, work, [DRAFT, FINAL], neutral_dir(recipe), "neutral")
    data = {
        "teacher_ref": ref,
        "redistilled": [DRAFT],
        "records": report.records,
        "kept": report.kept,
        "reused": reused,
        "filtered": report.filtered,
        "teacher_prompt": DRAFT_TEACHER_PROMPT,
        "instruction": DRAFT_INSTRUCTION,
        "stages": {name: tuned.stages.get(name, {}) for name in (DRAFT, FINAL)},
        "rank": plan["rank"],
    }
    write_json(recipe.out / "neutral.json", data)
    return data
