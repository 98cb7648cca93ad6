"""`fslm finetune`: one LoRA adapter per stage, saved as a movable trained-stack folder.

<out>/stack.yaml            the input stack with `adapter: adapters/<stage>` (relative paths)
<out>/adapters/<stage>/     adapter_config.json + adapter_model.safetensors (standard PEFT)
<out>/train_log.json        loss (and lr, tokens, seconds) per step, per stage; options; summaries
<out>/loss.png              one loss curve per stage
<out>/checkpoints/<stage>/  resume state; a rerun of the same command continues from here
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path

import torch

from fslm.config import StackConfig, check_chain, free_form_chain, load_default_stack_config, load_stack_config
from fslm.distill.store import read_distilled
from fslm.engine import load_engine, require_transformers
from fslm.errors import ConfigError, DataError
from fslm.finetune.checkpoint import load_done, mark_done
from fslm.finetune.examples import StageData, build_examples, pair_examples, usable_pairs, usable_records
from fslm.finetune.kd import check_token_teacher, load_teacher, token_kd_loss
from fslm.finetune.trainer import LossFn, StageResult, TrainOptions, mean_loss, train_stage
from fslm.io import atomic_file, iter_jsonl, write_atomic, write_json


@dataclass
class FinetuneReport:
    out: str
    stack_path: str
    stages: dict[str, dict] = field(default_factory=dict)  # per stage summary (examples, losses, tokens/s, ...)
    records: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _save_adapter(peft_model, target: Path, dtype: str = "float32") -> None:
    """save_pretrained into a temp folder, then rename: a half-written adapter never sits at the final path.

    dtype float16 stores the weights at half size (e.g. to keep shipped adapters small); PEFT casts them back to the
    model's dtype when loading.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    peft_model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "README.md").unlink(missing_ok=True)  # PEFT's blank model-card template (5 KB of "More Information Needed")
    if dtype == "float16":
        from safetensors.torch import load_file, save_file

        weights = tmp / "adapter_model.safetensors"
        tensors = {
            k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in load_file(weights).items()
        }
        save_file(tensors, weights, metadata={"format": "pt"})
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def lora_param_count(model, rank: int, targets: Sequence[str]) -> int:
    """LoRA parameters one adapter of this rank adds: rank * (in + out) per targeted linear layer (A and B)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            total += rank * (module.in_features + module.out_features)
    return total


def trained_stack_config(cfg: StackConfig, out: Path, trained: Sequence[str]) -> StackConfig:
    stages = []
    for stage in cfg.stages:
        if stage.name in trained:
            stages.append(stage.model_copy(update={"adapter": f"adapters/{stage.name}"}))
        elif stage.adapter is not None:  # keep an existing adapter, now by absolute path
            stages.append(stage.model_copy(update={"adapter": str(cfg.adapter_path(stage))}))
        elif stage.retrieve is not None:  # the index stays where it is, now by absolute path
            index = stage.retrieve.model_copy(update={"index": str(cfg.index_path(stage))})
            stages.append(stage.model_copy(update={"retrieve": index}))
        else:
            stages.append(stage)
    return cfg.model_copy(update={"stages": stages, "source_path": out / "stack.yaml"})


def plot_losses(log: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for stage, entry in log["stages"].items():
        steps = [s["step"] for s in entry["steps"]]
        ax.plot(steps, [s["loss"] for s in entry["steps"]], label=stage, linewidth=1.2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step (within the stage)")
    kd = log.get("options", {}).get("kd")
    plain = "gold-option cross-entropy" if log.get("kind") == "choice-kd" else "target-token cross-entropy"
    ax.set_ylabel(f"mixed loss (KD from {kd} + cross-entropy)" if kd else plain)
    ax.set_title(f"LoRA fine-tuning of stack {log['stack']!r}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_file(path) as fh:
            fig.savefig(fh, dpi=110, format="png")
    finally:
        plt.close(fig)


def finetune(
    stack: str | Path | StackConfig | None,
    data: str | Path,
    out: str | Path,
    options: TrainOptions | None = None,
    *,
    stages: Sequence[str] | None = None,
    engine=None,
    eval_loss: bool = False,
    progress: Callable[[str, int, int, float], None] | None = None,
    teacher=None,
) -> FinetuneReport:
    """Python twin of `fslm finetune`. Rerunning with the same arguments resumes (finished stages are skipped).
    With `options.kd` the loss mixes in token-level distillation from that teacher (`teacher`: its engine, loaded)."""
    options = options or TrainOptions()
    options.validate()
    _token_level(options)
    cfg = (
        stack
        if isinstance(stack, StackConfig)
        else load_default_stack_config()
        if stack is None
        else load_stack_config(stack)
    )
    full = cfg  # the trained stack keeps every stage; training sees those that answer prompts without options
    cfg = free_form_chain(cfg)
    check_chain(cfg, "fine-tuning")
    names = [s.name for s in cfg.stages]
    chosen = list(stages) if stages else names
    unknown = [s for s in chosen if s not in names]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {unknown}; stages of {cfg.name!r}: {names}")
    retrieval = [s.name for s in cfg.stages if s.is_retrieval]
    if stages and set(chosen) & set(retrieval):
        raise ConfigError(
            f"--stages: {sorted(set(chosen) & set(retrieval))} retrieve passages; they have no model to train"
        )
    chosen = [n for n in chosen if n not in retrieval]
    out = Path(out)
    records = usable_records(cfg, read_distilled(data), str(data))
    engine = require_transformers(engine or load_engine(cfg.base_model, dtype="float32"), "LoRA fine-tuning")
    base = engine.base_model
    pad_id = _pad_id(engine)
    loss_fn = _objective(options, engine, pad_id, teacher)
    t0 = time.perf_counter()
    report = FinetuneReport(str(out), str(out / "stack.yaml"), records=len(records))
    log = {"stack": cfg.name, "base_model": cfg.base_model, "data": str(data), "options": asdict(options), "stages": {}}
    for stage_data in build_examples(cfg, engine, records, options.max_length):
        if stage_data.stage in chosen:
            base = _train_adapter(
                stage_data,
                engine,
                base,
                cfg,
                names.index(stage_data.stage),
                out,
                options,
                pad_id,
                log,
                report,
                eval_loss,
                progress,
                loss_fn,
            )
    _write_trained(full, out, [n for n in names if n in log["stages"]], log, report, t0)
    return report


def read_pairs(path: str | Path) -> list[dict]:
    """A pairs JSONL file ({id, context, continuation} per line); a malformed line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: pairs file not found (one JSON object per line: id, context, continuation)")
    rows = []
    for number, row in iter_jsonl(path, bad_line="{path}: line {line}: not valid JSON ({problem})"):
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object with id, context, continuation")
        rows.append({**row, "_line": number})
    return usable_pairs(rows, str(path))


def finetune_pairs(
    stack: str | Path | StackConfig | None,
    stage: str,
    data: str | Path,
    out: str | Path,
    options: TrainOptions | None = None,
    *,
    engine=None,
    progress: Callable[[str, int, int, float], None] | None = None,
    teacher=None,
) -> FinetuneReport:
    """Train `stage`'s adapter on (context, continuation) pairs (`read_pairs`): the loss is the continuation's
    log-probability after the context, exactly what `engine.score` measures, so the adapter is fit to be scored on
    raw contexts (`--answer-format raw-adapter`), not to reply in the stage's chat format. Resumes like `finetune`;
    the other stages keep their adapters (by absolute path) in out/stack.yaml. `options.kd`: as for `finetune`."""
    options = options or TrainOptions()
    options.validate()
    _token_level(options)
    cfg = (
        stack
        if isinstance(stack, StackConfig)
        else load_default_stack_config()
        if stack is None
        else load_stack_config(stack)
    )
    names = [s.name for s in cfg.stages]
    if stage not in names:
        raise ConfigError(f"stage {stage!r}: not a stage of {cfg.name!r} (stages: {names})")
    if cfg.stages[names.index(stage)].is_retrieval:
        raise ConfigError(f"stage {stage!r} retrieves passages; it has no model to train")
    out = Path(out)
    rows = read_pairs(data)
    engine = require_transformers(engine or load_engine(cfg.base_model, dtype="float32"), "LoRA fine-tuning")
    pad_id = _pad_id(engine)
    loss_fn = _objective(options, engine, pad_id, teacher)
    t0 = time.perf_counter()
    report = FinetuneReport(str(out), str(out / "stack.yaml"), records=len(rows))
    log = {
        "stack": cfg.name,
        "base_model": cfg.base_model,
        "data": str(data),
        "kind": "pairs",
        "options": asdict(options),
        "stages": {},
    }
    stage_data = pair_examples(stage, engine, rows, options.max_length)
    _train_adapter(
        stage_data,
        engine,
        engine.base_model,
        cfg,
        names.index(stage),
        out,
        options,
        pad_id,
        log,
        report,
        False,
        progress,
        loss_fn,
    )
    _write_trained(cfg, out, [stage], log, report, t0)
    return report


def _token_level(options: TrainOptions) -> None:
    if options.distilling and options.kd_level != "token":
        raise ConfigError(
            "--kd-level choice distils option scores on task questions: fslm finetune --kd-level choice --tasks ... "
            "(Python: fslm.finetune.finetune_choice_kd)"
        )


def _objective(options: TrainOptions, engine, pad_id: int, teacher) -> LossFn | None:
    """The token-level distillation loss when `options.kd` names a teacher (loaded here unless given), else None."""
    if not options.distilling:
        return None
    loaded = load_teacher(options, teacher)
    check_token_teacher(engine, loaded)
    return lambda model, batch, bf16: token_kd_loss(model, loaded, batch, pad_id, options, bf16)


def _pad_id(engine) -> int:
    return engine.tokenizer.pad_token_id if engine.tokenizer.pad_token_id is not None else engine.eos_ids[0]


def _train_adapter(
    stage_data: StageData,
    engine,
    base,
    cfg: StackConfig,
    seed_offset: int,
    out: Path,
    options: TrainOptions,
    pad_id: int,
    log: dict,
    report: FinetuneReport,
    eval_loss: bool,
    progress,
    loss_fn: LossFn | None = None,
) -> object:
    """Train (or resume, or skip when done with the same options and data) one stage's adapter into
    out/adapters/<stage>; returns the base model, back to plain weights."""
    from peft import LoraConfig, get_peft_model

    name = stage_data.stage
    if not stage_data.examples:
        raise ConfigError(f"stage {name!r}: every example is longer than --max-length {options.max_length}; raise it")
    ckpt_dir = out / "checkpoints" / name
    fingerprint = {**options.math_fingerprint(), "data": stage_data.fingerprint(), "base_model": cfg.base_model}
    done = load_done(ckpt_dir)
    if (
        done is not None
        and done.get("fingerprint") == fingerprint
        and (out / "adapters" / name / "adapter_model.safetensors").is_file()
    ):
        log["stages"][name] = done["log_entry"]
        report.stages[name] = {**done["log_entry"]["summary"], "skipped": "already trained"}
        return base
    if done is not None:
        raise ConfigError(f"{out}: stage {name!r} was trained with other options or data; use a new --out")
    torch.manual_seed(options.seed + seed_offset)
    lora = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.targets),
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(base, lora)
    except ValueError as err:
        raise ConfigError(f"--targets {','.join(options.targets)}: {err}") from None
    try:
        before = mean_loss(peft_model, stage_data.examples, pad_id, options) if eval_loss else None
        result: StageResult = train_stage(
            peft_model,
            stage_data.examples,
            options,
            ckpt_dir,
            fingerprint,
            pad_id,
            (lambda step, total, loss, _n=name: progress(_n, step, total, loss)) if progress else None,
            loss_fn,
        )
        after = mean_loss(peft_model, stage_data.examples, pad_id, options) if eval_loss else None
        _save_adapter(peft_model, out / "adapters" / name, options.save_dtype)
    finally:
        base = peft_model.unload()  # the shared base model goes back to plain weights
        base.eval()
    result.skipped_too_long = stage_data.skipped_too_long
    summary = result.summary()
    if eval_loss:
        summary.update(loss_before=round(before, 4), loss_after=round(after, 4))
    entry = {"summary": summary, "steps": result.steps}
    mark_done(ckpt_dir, {"fingerprint": fingerprint, "log_entry": entry})
    log["stages"][name] = entry
    report.stages[name] = summary
    return base


def _write_trained(
    cfg: StackConfig, out: Path, trained: Sequence[str], log: dict, report: FinetuneReport, t0: float
) -> None:
    """stack.yaml naming the new adapters (atomically), train_log.json and the loss plot."""
    new_cfg = trained_stack_config(cfg, out, trained)
    write_atomic(out / "stack.yaml", new_cfg.to_yaml())
    report.seconds = round(time.perf_counter() - t0, 1)
    log["summary"] = report.stages
    write_json(out / "train_log.json", log)
    if find_spec("matplotlib") is not None:  # a nicety (in the eval extra): training itself needs only the core
        plot_losses(log, out / "loss.png")
