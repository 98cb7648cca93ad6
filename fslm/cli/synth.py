"""`fslm synth`: self-instruct, a teacher grows Alpaca-format instruction data from seed tasks (resumable JSONL)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fslm.cli.common import (
    LazyProgress,
    check_dtype,
    check_file,
    check_output,
    console,
    default_of,
    out,
    print_json,
)
from fslm.cli.teacher import (
    API_KEY_ENV,
    CONCURRENCY,
    TEACHER_ENGINE,
    TEACHER_MODEL,
    TEACHER_URL,
    TIMEOUT,
    teacher_from_options,
)
from fslm.distill.synth import SynthOptions, SynthReport, check_options, load_seed_tasks, synth
from fslm.teachers import make_teacher


def render_report(report: SynthReport) -> None:
    table = Table(title=f"synthesized -> {report.out}", show_header=False, title_justify="left")
    rows = [
        ("teacher", report.teacher or "(not needed: the file already has --n records)"),
        ("records wanted (--n)", str(report.target)),
        ("already in the file (resumed)", str(report.already_done)),
        ("written by this run", str(report.written)),
        ("rounds", str(report.rounds)),
        ("instructions proposed", str(report.proposed)),
    ]
    rows += [(f"rejected {reason}", str(n)) for reason, n in report.rejected.items()]
    if report.repaired_bytes:
        rows.append(("partial last line removed", f"{report.repaired_bytes} bytes"))
    rows.append(("seconds", f"{report.seconds:.1f}"))
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)
    if report.stalled:
        console.print(
            "[yellow]stopped early:[/] the last rounds kept no new instruction; try another --seed or teacher"
        )


def synth_command(
    out_path: Path = typer.Option(Path("synth.jsonl"), "--out", "-o", help="Alpaca-format JSONL; rerunning resumes."),
    n: int = typer.Option(default_of(SynthOptions, "n"), "--n", "-n", min=1, help="Records the file should hold."),
    seed: int = typer.Option(default_of(SynthOptions, "seed"), "--seed", help="Sampling seed (deterministic runs)."),
    seeds: Path | None = typer.Option(
        None, "--seeds", help="Seed tasks JSONL (default: $FSLM_DATA_DIR/alpaca/seed_tasks.jsonl)."
    ),
    teacher: str | None = typer.Option(
        None, "--teacher", help=f"Local teacher model (default: {default_of(make_teacher, 'default_ref')})."
    ),
    teacher_url: str | None = TEACHER_URL,
    teacher_model: str | None = TEACHER_MODEL,
    api_key_env: str | None = API_KEY_ENV,
    concurrency: int = CONCURRENCY,
    timeout: float = TIMEOUT,
    similarity: float = typer.Option(
        default_of(SynthOptions, "similarity"),
        "--similarity",
        help="Keep an instruction only if its ROUGE-L to every pooled instruction is below this.",
    ),
    seed_examples: int = typer.Option(
        default_of(SynthOptions, "seed_examples"), "--seed-examples", help="Seed instructions shown per request."
    ),
    generated_examples: int = typer.Option(
        default_of(SynthOptions, "generated_examples"),
        "--generated-examples",
        help="Generated instructions shown per request.",
    ),
    per_request: int = typer.Option(
        default_of(SynthOptions, "per_request"), "--per-request", help="New instructions asked for per request."
    ),
    requests_per_round: int = typer.Option(
        default_of(SynthOptions, "requests_per_round"), "--requests-per-round", help="Teacher requests per round."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    engine: str = TEACHER_ENGINE,
    teacher_dtype: str = typer.Option(
        default_of(make_teacher, "dtype"),
        "--teacher-dtype",
        help="A local teacher's weights: float32 or bfloat16 (faster on CPUs with native bf16).",
    ),
) -> None:
    """Self-instruct: a teacher writes new instructions, inputs and outputs from seed tasks (resumable JSONL)."""
    options = SynthOptions(
        n=n,
        seed=seed,
        similarity=similarity,
        seed_examples=seed_examples,
        generated_examples=generated_examples,
        per_request=per_request,
        requests_per_round=requests_per_round,
    )
    check_options(options)
    check_dtype(teacher_dtype, "--teacher-dtype")
    check_output(out_path, "--out", folder=False)
    if seeds is not None:
        check_file(seeds, "seed tasks file")
    load_seed_tasks(seeds)  # a bad seeds file fails before any teacher is built
    load_teacher = teacher_from_options(
        teacher,
        teacher_url,
        teacher_model,
        api_key_env,
        concurrency,
        timeout,
        engine,
        quiet=json_output,
        dtype=teacher_dtype,
    )
    columns = [TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]  # fmt: skip
    with LazyProgress(*columns, console=console, disable=json_output) as bar:
        task = bar.add_task("synth", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = synth(out_path, teacher=load_teacher, seeds=seeds, options=options, progress=progress)
    if json_output:
        print_json(report.to_dict())
    else:
        render_report(report)
