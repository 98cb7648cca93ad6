"""`fslm distill`: teacher-written stage targets for instruction data, with a live progress bar and filter counts."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from fslm.cli.common import LazyProgress, check_output, check_ray, console, default_of, out, print_json, ray_options
from fslm.cli.teacher import (
    API_KEY_ENV,
    CONCURRENCY,
    TEACHER_ENGINE,
    TEACHER_MODEL,
    TEACHER_URL,
    TIMEOUT,
    teacher_from_options,
)
from fslm.config import load_default_stack_config, load_stack_config
from fslm.distill import DistillOptions, DistillReport, distill

RAY, RAY_ACTORS = ray_options()


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} rec/s" if speed else "-- rec/s", style="cyan")


def render_report(report: DistillReport) -> None:
    table = Table(title=f"distilled -> {report.out}", show_header=False, title_justify="left")
    rows = [
        ("teacher", report.teacher or "(not needed: nothing left to do)"),
        ("records selected", str(report.records)),
        ("duplicates in data (skipped)", str(report.duplicates)),
        ("already done (resumed)", str(report.already_done)),
        ("written by this run", str(report.written)),
        ("kept (usable for finetune)", str(report.kept)),
        ("teacher retries", str(report.retries)),
        ("seconds", f"{report.seconds:.1f}"),
    ]
    if report.repaired_bytes:
        rows.append(("partial last line removed", f"{report.repaired_bytes} bytes"))
    for reason, count in report.filtered.items():
        rows.append((f"filtered {reason}", str(count)))
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


def distill_command(
    stack: Path | None = typer.Option(
        None, "--stack", "-s", help="Stack YAML whose stages get targets (default: packaged stack)."
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Alpaca JSON list or JSONL (default: $FSLM_DATA_DIR/alpaca/random_9k.json)."
    ),
    out_path: Path = typer.Option(Path("distilled.jsonl"), "--out", "-o", help="Output JSONL; rerunning resumes it."),
    teacher: str | None = typer.Option(
        None, "--teacher", help="Local teacher model reference (default: the stack's base model)."
    ),
    teacher_url: str | None = TEACHER_URL,
    teacher_model: str | None = TEACHER_MODEL,
    api_key_env: str | None = API_KEY_ENV,
    concurrency: int = CONCURRENCY,
    timeout: float = TIMEOUT,
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="Use the first N unique records."),
    batch_size: int = typer.Option(
        default_of(DistillOptions, "batch_size"),
        "--batch-size",
        min=1,
        help="Records per teacher batch (and per fsync).",
    ),
    no_hints: bool = typer.Option(False, "--no-hints", help="Never show the teacher the gold output."),
    no_leak: str | None = typer.Option(
        None, "--no-leak", help="Comma-separated stages that must not contain the gold answer."
    ),
    reuse: Path | None = typer.Option(
        None, "--reuse", help="Earlier distilled JSONL: keep its targets for the stages not in --redo."
    ),
    redo: str | None = typer.Option(
        None,
        "--redo",
        help="Comma-separated stages to redistill (with --reuse), e.g. after editing their teacher_prompt.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    engine: str = TEACHER_ENGINE,
    ray: str | None = RAY,
    ray_actors: int | None = RAY_ACTORS,
) -> None:
    """Have a teacher write every stage's target text for instruction data (resumable JSONL)."""
    cfg = load_default_stack_config() if stack is None else load_stack_config(stack)
    check_output(out_path, "--out", folder=False)
    load_teacher = teacher_from_options(  # called by distill() only after the data validated and if work is left
        teacher,
        teacher_url,
        teacher_model,
        api_key_env,
        concurrency,
        timeout,
        engine,
        quiet=json_output,
        default_ref=cfg.base_model,
        default_what=f"{cfg.source_path or 'stack'}: base_model",
        dtype=cfg.dtype,
    )
    options = DistillOptions(
        limit=limit,
        batch_size=batch_size,
        hints=not no_hints,
        no_leak=None if no_leak is None else [s.strip() for s in no_leak.split(",") if s.strip()],
        reuse=reuse,
        redo=[s.strip() for s in (redo or "").split(",") if s.strip()],
    )
    check_ray(ray, ray_actors)

    columns = [
        TextColumn("[bold]distill"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with LazyProgress(*columns, console=console, disable=json_output) as bar:  # shown once records are read
        task = bar.add_task("distill", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if ray is None:
            make = load_teacher
        elif teacher_url:  # Ray workers get what builds a teacher, picklable: each builds its own
            from fslm.engine.http import api_key_from_env
            from fslm.teachers import HTTPTeacher

            key = api_key_from_env(api_key_env)  # it travels resolved, not as an env var name
            make = partial(
                HTTPTeacher, teacher_url, teacher_model, api_key=key, concurrency=concurrency, timeout=timeout
            )
        else:
            from fslm.teachers import make_teacher

            make = partial(make_teacher, teacher, default_ref=cfg.base_model, dtype=cfg.dtype, backend=engine)
        report = distill(
            cfg, data, out_path, teacher=make, options=options, progress=progress, ray=ray, ray_actors=ray_actors
        )
    if json_output:
        print_json(report.to_dict())
    else:
        render_report(report)
