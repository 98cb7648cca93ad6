"""`fslm finetune`: LoRA-train each stage on distilled targets; rerun the same command to resume after a kill."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fslm.cli.common import (
    LazyProgress,
    check_file,
    check_model,
    check_output,
    check_stack,
    console,
    default_of,
    out,
    print_json,
)
from fslm.errors import ConfigError, InputError
from fslm.finetune.options import (  # torch-free: checked before training loads
    ALL_PROJECTIONS,
    CHOICE_QUESTIONS,
    PRECISIONS,
    SAVE_DTYPES,
    TrainOptions,
)

if TYPE_CHECKING:
    from fslm.config import StackConfig
    from fslm.finetune import FinetuneReport

# Training imports torch: it is imported only once the options below checked out. Defaults are TrainOptions' own.
PROJECTIONS = ",".join(ALL_PROJECTIONS)
DEFAULTS = TrainOptions()


def render_report(report: FinetuneReport) -> None:
    table = Table(title=f"trained stack -> {report.stack_path}", title_justify="left")
    for col in ("stage", "examples", "too long", "steps", "loss", "tok/s", "s", "note"):
        table.add_column(col, justify="left" if col in ("stage", "note") else "right", no_wrap=col != "note")
    for name, s in report.stages.items():
        note = s.get("skipped") or (f"resumed at step {s['resumed_from_step']}" if s.get("resumed_from_step") else "")
        if "final_kd" in s:  # distillation: the two parts of the final loss
            note = f"kd {s['final_kd']:.3f}, hard {s['final_hard']:.3f}" + (f"; {note}" if note else "")
        table.add_row(
            name,
            str(s["examples"]),
            str(s["skipped_too_long"]),
            str(s["steps"]),
            f"{s['first_loss']:.3f}->{s['final_loss']:.3f}",
            f"{s['tokens_per_second']:.0f}",
            f"{s['seconds']:.0f}",
            note,
        )
    out.print(table)
    out.print(f'run it: [bold]fslm run --stack {report.stack_path} "your question"[/]')


def split_names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def check_stages(cfg: StackConfig, chosen: list[str] | None, pairs: bool) -> None:
    """Stage names before torch and the model load (fslm.finetune says the same, later)."""
    names = [s.name for s in cfg.stages]
    unknown = [s for s in chosen or [] if s not in names]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {unknown}; stages of {cfg.name!r}: {names}")
    if pairs and (not chosen or len(chosen) != 1):
        raise InputError("--pairs trains one stage: name it with --stages (e.g. --stages answer)")


def check_kd(
    options: TrainOptions, data: Path | None, pairs: bool, tasks: str | None, chosen: list[str] | None
) -> None:
    """The distillation flags agree with each other and with the data flags, before any model loads."""
    options.validate()
    choice = options.kd_level == "choice"
    if options.kd is not None:
        check_model(options.kd, "--kd")
    if options.kd_adapter is not None and not Path(options.kd_adapter).is_dir():
        raise InputError(f"--kd-adapter {options.kd_adapter}: not a folder (a PEFT LoRA adapter folder)")
    if choice:
        if pairs:
            raise InputError("--kd-level choice draws its own questions from --tasks; it takes no --pairs")
        if data is not None:
            raise InputError("--kd-level choice draws its questions from --tasks; it reads no --data")
        if not tasks:
            raise InputError("--kd-level choice needs --tasks (multiple-choice tasks with a train/dev split)")
        if not chosen or len(chosen) != 1:
            raise InputError("--kd-level choice trains one stage: name it with --stages (e.g. --stages answer)")
        from fslm.tasks.splits import parse_tasks

        parse_tasks(tasks)
        return
    if tasks:
        raise InputError("--tasks is read by --kd-level choice only")
    if data is None:
        raise InputError("--data is required (a distilled file, or pairs with --pairs)")


def finetune_command(
    data: Path | None = typer.Option(
        None, "--data", help="Distilled JSONL written by `fslm distill` (not with --kd-level choice)."
    ),
    out_dir: Path = typer.Option(
        ..., "--out", "-o", help="Folder for stack.yaml, adapters/, train_log.json, loss.png."
    ),
    stack: Path | None = typer.Option(None, "--stack", "-s", help="Stack YAML to train (default: packaged stack)."),
    stages: str | None = typer.Option(None, "--stages", help="Comma-separated stages to train (default: all)."),
    rank: int = typer.Option(DEFAULTS.rank, "--rank", min=1, help="LoRA rank."),
    alpha: int = typer.Option(DEFAULTS.alpha, "--alpha", min=1, help="LoRA alpha (scale = alpha / rank)."),
    targets: str = typer.Option(PROJECTIONS, "--targets", help="Comma-separated module names that get LoRA."),
    lr: float = typer.Option(DEFAULTS.lr, "--lr", help="Peak learning rate (linear warmup, linear decay)."),
    epochs: int = typer.Option(DEFAULTS.epochs, "--epochs", min=1, help="Passes over each stage's examples."),
    max_length: int = typer.Option(
        DEFAULTS.max_length, "--max-length", min=8, help="Longer examples are skipped (counted), never cut."
    ),
    batch_size: int = typer.Option(DEFAULTS.batch_size, "--batch-size", min=1, help="Examples per optimizer step."),
    save_every: int = typer.Option(DEFAULTS.save_every, "--save-every", min=1, help="Checkpoint every N steps."),
    seed: int = typer.Option(DEFAULTS.seed, "--seed", help="Seed for LoRA init, data order and dropout."),
    precision: str = typer.Option(
        DEFAULTS.precision, "--precision", help="auto (bf16 autocast where the CPU has native bf16) | bf16 | fp32."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Torch threads (default: picked from the machine's load)."
    ),
    save_dtype: str = typer.Option(
        DEFAULTS.save_dtype, "--save-dtype", help="Adapter file storage: float32 | float16 (half the size)."
    ),
    max_batch_tokens: int = typer.Option(
        DEFAULTS.max_batch_tokens,
        "--max-batch-tokens",
        min=1,
        help="Memory bound: a batch over this many padded tokens runs in parts, gradients accumulated (same update).",
    ),
    gradient_checkpointing: bool = typer.Option(
        DEFAULTS.gradient_checkpointing,
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Memory: keep each layer's input, recompute the rest in the backward pass (more compute, far less memory).",
    ),
    kd: str | None = typer.Option(
        None, "--kd", help="Teacher model to distil from (frozen): the loss mixes its soft targets with the data's."
    ),
    kd_adapter: str | None = typer.Option(None, "--kd-adapter", help="A LoRA adapter folder the teacher runs with."),
    kd_temperature: float = typer.Option(
        default_of(TrainOptions, "kd_temperature"), "--kd-temperature", help="Softens both distributions (> 0)."
    ),
    kd_mix: float = typer.Option(
        default_of(TrainOptions, "kd_mix"),
        "--kd-mix",
        help="Share of the KD term in the loss (0..1); the rest is hard CE.",
    ),
    kd_level: str = typer.Option(
        default_of(TrainOptions, "kd_level"),
        "--kd-level",
        help="token: next-token distributions (one tokenizer); choice: option scores on --tasks questions (any teacher;"
        " without --kd: the gold options alone, the hard-label baseline).",
    ),
    kd_confidence: float = typer.Option(
        default_of(TrainOptions, "kd_confidence"),
        "--kd-confidence",
        help="--kd-level choice, weak-to-strong: this share of the KD term trains toward the student's own answer.",
    ),
    tasks: str | None = typer.Option(
        None, "--tasks", help="--kd-level choice: comma-separated multiple-choice tasks (train/dev splits only)."
    ),
    kd_questions: int = typer.Option(
        CHOICE_QUESTIONS, "--kd-questions", min=1, help="--kd-level choice: questions in all, a share per task."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    pairs: bool = typer.Option(
        False,
        "--pairs",
        help="--data holds (context, continuation) pairs ({id, context, continuation} per line): train the one stage named by --stages to be scored on raw contexts (`fslm eval --answer-format raw-adapter`).",
    ),
) -> None:
    """Fine-tune one LoRA adapter per stage on distilled data and write a runnable trained stack."""
    if lr <= 0:
        raise InputError(f"--lr must be > 0, got {lr}")
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r}: expected {', '.join(PRECISIONS)}")
    if save_dtype not in SAVE_DTYPES:
        raise InputError(f"--save-dtype {save_dtype!r}: expected {' or '.join(SAVE_DTYPES)}")
    if not split_names(targets):
        raise InputError("--targets names no module; e.g. --targets q_proj,v_proj")
    chosen = split_names(stages) or None
    options = TrainOptions(
        rank=rank,
        alpha=alpha,
        targets=tuple(split_names(targets)),
        lr=lr,
        epochs=epochs,
        max_length=max_length,
        batch_size=batch_size,
        save_every=save_every,
        seed=seed,
        precision=precision,
        threads=threads,
        save_dtype=save_dtype,
        max_batch_tokens=max_batch_tokens,
        gradient_checkpointing=gradient_checkpointing,
        kd=kd,
        kd_adapter=kd_adapter,
        kd_temperature=kd_temperature,
        kd_mix=kd_mix,
        kd_level=kd_level,
        kd_confidence=kd_confidence,
    )
    check_kd(options, data, pairs, tasks, chosen)
    cfg = check_stack(stack, adapters=False)  # its adapters are what this trains
    check_stages(cfg, chosen, pairs)
    if data is not None:
        check_file(data, "pairs file" if pairs else "distilled file")
    check_output(out_dir, "--out", folder=True)

    from fslm.finetune import finetune, finetune_choice_kd, finetune_pairs

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with LazyProgress(*columns, console=console, disable=json_output) as bar:  # shown from the first step
        bars: dict[str, int] = {}

        def progress(stage: str, step: int, total: int, loss: float) -> None:
            if stage not in bars:
                bars[stage] = bar.add_task(stage, total=total, loss="-")
            bar.update(bars[stage], completed=step, total=total, loss=f"{loss:.3f}")

        if options.kd_level == "choice":
            assert chosen is not None  # check_kd
            report = finetune_choice_kd(
                stack, chosen[0], out_dir, options, tasks=tasks, questions=kd_questions, progress=progress
            )
        elif pairs:
            assert chosen is not None and data is not None  # check_stages, check_kd
            report = finetune_pairs(stack, chosen[0], data, out_dir, options, progress=progress)
        else:
            assert data is not None  # check_kd
            report = finetune(stack, data, out_dir, options, stages=chosen, progress=progress)
    if json_output:
        print_json(report.to_dict())
    else:
        render_report(report)
