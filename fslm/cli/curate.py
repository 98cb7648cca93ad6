"""`fslm curate`: score instruction records with a small proxy model (and a quality classifier), keep the best."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fslm.cli.common import (
    LazyProgress,
    check_dtype,
    check_engine,
    check_file,
    check_model,
    check_output,
    console,
    default_of,
    engine_option,
    out,
    print_json,
)
from fslm.distill.curate import RANKINGS, CurateOptions, CurateReport, check_options, curate, scores_path
from fslm.distill.judge import judged_path
from fslm.errors import InputError


def render_report(report: CurateReport) -> None:
    table = Table(title=f"curated -> {report.out}", show_header=False, title_justify="left")
    random = report.by == "random"
    rows = [
        ("scoring model", "none (random order)" if random else report.model or "none (quality classifier only)"),
        ("input format", report.format),
        ("records", str(report.records)),
        ("duplicates (skipped)", str(report.duplicates)),
        ("already scored (resumed)", str(report.already_scored)),
        ("scored by this run", str(report.scored)),
        ("ranked by", f"random (seed {report.seed})" if random else report.by),
        ("kept", str(report.kept)),
        ("scores", report.scores),
        ("seconds", f"{report.seconds:.1f}"),
    ]
    rows += [(f"not scorable: {reason}", str(n)) for reason, n in report.unscorable.items()]
    if report.repaired_bytes:
        rows.append(("partial last line removed", f"{report.repaired_bytes} bytes"))
    if report.judge:
        j = report.judge
        rows += [
            ("judge", j["judge"]),
            ("judged labels", j["labels"]),
            ("judged (resumed + this run)", f"{j['already_judged']} + {j['judged']} of a {j['sample']}-record sample"),
            ("judge P(yes) median", f"{j['median']:.4g} (log-odds {j['median_log_odds']:.2f})"),
            ("labels good / bad", f"{j['good']} / {j['bad']}"),
        ]
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)
    if random:
        return  # no scores, no distribution
    dist = Table(title="score distribution (scorable records)", title_justify="left")
    dist.add_column("")
    names = {"nll": "nll/token (lower kept)", "quality": "P(good) (higher kept)"}
    for signal in report.summary:
        dist.add_column(names[signal], justify="right")
    for stat in ["count", "mean", "min", "p10", "p25", "p50", "p75", "p90", "max"]:
        dist.add_row(stat, *(str(stats.get(stat, "")) for stats in report.summary.values()))
    dist.add_row("kept cutoff", *(str(report.cutoff.get(signal, "")) for signal in report.summary))
    out.print(dist)
    for end, title in (("best", "ranked first"), ("worst", "ranked last")):
        if not report.ends.get(end):
            continue
        shown = Table(title=f"records {title}", title_justify="left")
        for column in ("rank", *report.summary, "prompt", "output"):
            shown.add_column(column, overflow="fold")
        for row in report.ends[end]:
            scores = [str(row.get(signal, "")) for signal in report.summary]
            shown.add_row(str(row["rank"]), *scores, row["prompt"], row["output"])
        out.print(shown)


def curate_command(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Alpaca JSON list / JSONL, or a distilled JSONL (default: $FSLM_DATA_DIR/alpaca/random_9k.json).",
    ),
    out_path: Path = typer.Option(..., "--out", "-o", help="Kept records, in the input's format."),
    scores: Path | None = typer.Option(
        None, "--scores", help="Per-record scores JSONL; rerunning resumes it (default: <out>.scores.jsonl)."
    ),
    model: str = typer.Option(default_of(curate, "model"), "--model", "-m", help="Small model that scores outputs."),
    keep: float = typer.Option(default_of(CurateOptions, "keep"), "--keep", help="Fraction of records kept."),
    top: int | None = typer.Option(None, "--top", min=1, help="Keep the best N records instead of a fraction."),
    labels: Path | None = typer.Option(
        None, "--labels", help="Records labelled good/bad (a `label` field) that train a quality classifier."
    ),
    judge: str | None = typer.Option(
        None,
        "--judge",
        help="Instead of --labels: a larger model labels a sample good/bad (P(yes) at or above the sample's median) "
        "and those labels train the quality classifier; written to <out stem>.judged.jsonl.",
    ),
    judge_n: int = typer.Option(
        default_of(CurateOptions, "judge_n"), "--judge-n", min=2, help="--judge: records in the judged sample."
    ),
    judge_dtype: str = typer.Option(default_of(CurateOptions, "judge_dtype"), "--judge-dtype", help="Judge dtype."),
    by: str | None = typer.Option(
        None,
        "--by",
        help="Rank by perplexity, quality or both (default: both with --labels or --judge, else perplexity); random: "
        "a seeded random order over the same records (the baseline at equal N, no model).",
    ),
    seed: int = typer.Option(
        default_of(CurateOptions, "seed"), "--seed", help="--by random: the order's seed; --judge: its sample's."
    ),
    batch_size: int = typer.Option(
        default_of(CurateOptions, "batch_size"), "--batch-size", min=1, help="Records per scoring call (and fsync)."
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Write a histogram of the scores to this PNG."),
    dtype: str = typer.Option(default_of(curate, "dtype"), "--dtype", help="Scoring model dtype."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    engine: str = engine_option(default_of(curate, "backend")),
) -> None:
    """Score instruction records by a small model's perplexity (and a quality classifier); keep the best."""
    options = CurateOptions(
        keep=keep,
        top=top,
        by=by,
        labels=labels,
        batch_size=batch_size,
        seed=seed,
        judge=judge,
        judge_n=judge_n,
        judge_dtype=judge_dtype,
    )
    if by is not None and by not in RANKINGS:
        raise InputError(f"--by {by!r}: choose one of {', '.join(RANKINGS)}")
    check_options(options)
    if data is not None:
        check_file(data, "data file")
    if labels is not None:
        check_file(labels, "labels file")
    check_output(out_path, "--out", folder=False)
    check_output(scores or scores_path(out_path), "--scores", folder=False)
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise InputError(f"--plot {plot}: expected a .png file name")
        check_output(plot, "--plot", folder=False)
    check_dtype(dtype)
    check_engine(engine)
    if by in (None, "perplexity", "both"):  # a random or quality-only order loads no scoring model
        check_model(model, "--model")
    if judge is not None:
        check_model(judge, "--judge")
        check_output(judged_path(out_path), "the judged labels file", folder=False)
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with LazyProgress(*columns, console=console, disable=json_output) as bar:
        task = bar.add_task("curate", total=None)
        judging = bar.add_task("judge", total=None) if judge is not None else None

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        def judge_progress(done: int, total: int) -> None:
            bar.update(judging, completed=done, total=total)

        report = curate(
            data,
            out_path,
            model=model,
            scores=scores,
            options=options,
            progress=progress,
            plot=plot,
            dtype=dtype,
            backend=engine,
            judge_progress=judge_progress if judge is not None else None,
        )
    if json_output:
        print_json(report.to_dict())
    else:
        render_report(report)
        if plot is not None:
            console.print(f"histogram -> {plot}", style="dim")
