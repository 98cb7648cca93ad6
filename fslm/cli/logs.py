"""`fslm logs ...`: list, show, search, export and prune the run log (the Python twins are in fslm.logs)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from fslm.cli.common import check_output, check_text, console, default_of, guarded, out, print_json
from fslm.errors import InputError
from fslm.logs import list_runs, search_runs  # for their default -n (no torch)

SUMMARY = "Browse the log of every run, generate and serve request: list, show, search, export, rm, prune."
app = typer.Typer(help=SUMMARY, invoke_without_command=True, no_args_is_help=False)

LIMIT = typer.Option(default_of(list_runs, "limit"), "-n", "--limit", help="How many runs (newest first).")


def _check_limit(limit: int, what: str = "-n") -> int:
    if limit < 1:
        raise InputError(f"{what} must be at least 1, got {limit}")
    return limit


def _head(text: str | None, width: int) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _who(run: dict[str, Any]) -> str:
    return run.get("stack") or Path(str(run.get("model") or "?")).name


def _minute(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _print_runs(runs: list[dict[str, Any]], json_output: bool, title: str, empty: str) -> None:
    if json_output:
        for run in runs:
            print_json(run)
        return
    if not runs:
        from fslm.logs import log_path
        from fslm.settings import get_settings

        off = "; logging is off: FSLM_LOG=0" if not get_settings().log else ""
        console.print(f"{empty} (log: {log_path()}{off})", style="dim", highlight=False, markup=False)
        return
    count = f"{len(runs)} run" + "s" * (len(runs) != 1)
    table = Table(title=Text(f"{count} {title}"), title_justify="left")
    # The fixed columns keep their width; prompt and answer share what is left, cut with "…" (never wrapped). On a
    # narrow terminal the stack / model column goes first.
    id_width = max(2, *(len(str(r["id"])) for r in runs))
    who_width = min(24, max(len("stack / model"), *(len(_who(r)) for r in runs)))
    fixed = id_width + 16 + 8 + 6 + 1  # id, time, kind, seconds, and a column of slack
    flex = (out.width - fixed - who_width - 22) // 2  # 22: borders and padding of 7 columns
    show_who = flex >= 14
    if not show_who:
        flex = max(8, (out.width - fixed - 19) // 2)
    table.add_column("id", justify="right", no_wrap=True, min_width=id_width)
    table.add_column("time", no_wrap=True, min_width=16)
    table.add_column("kind", no_wrap=True, min_width=8)
    if show_who:
        table.add_column("stack / model", no_wrap=True, overflow="ellipsis", max_width=who_width)
    table.add_column("prompt", no_wrap=True, overflow="ellipsis", max_width=flex)
    table.add_column("answer", no_wrap=True, overflow="ellipsis", max_width=flex)
    table.add_column("s", justify="right", no_wrap=True, min_width=6)
    for run in runs:
        error = run.get("error")
        answer = Text(_head(error, flex), style="red") if error else Text(_head(run.get("answer"), flex))
        seconds = run.get("seconds")
        cells = [str(run["id"]), _minute(run["created"]), Text(str(run["kind"]))]
        cells += [Text(_who(run))] if show_who else []
        cells += [Text(_head(run.get("prompt"), flex)), answer, "" if seconds is None else f"{seconds:.2f}"]
        table.add_row(*cells)
    out.print(table)


@app.callback()
@guarded
def logs_command(
    ctx: typer.Context,
    limit: int = LIMIT,
    json_output: bool = typer.Option(False, "--json", help="One JSON summary per line instead of a table."),
) -> None:
    if ctx.invoked_subcommand is None:
        list_command(limit, json_output)


@app.command("list")
@guarded
def list_command(
    limit: int = LIMIT,
    json_output: bool = typer.Option(False, "--json", help="One JSON summary per line instead of a table."),
) -> None:
    """List recent runs: id, time, kind, stack or model, prompt, answer (or error), seconds."""
    _print_runs(list_runs(_check_limit(limit)), json_output, "(newest first)", "no runs logged yet")


@app.command("show")
@guarded
def show_command(
    run_id: str = typer.Argument(..., help="A run's id (as `fslm logs list` shows it) or a server completion id."),
    json_output: bool = typer.Option(False, "--json", help="Print the whole entry as one JSON object."),
    show_inputs: bool = typer.Option(False, "--inputs", help="Also show the exact text each stage was given."),
) -> None:
    """Print one run: what ran, then every stage's text as `fslm run` shows it."""
    from fslm.logs import get_run

    entry = get_run(check_text(run_id, "ID"))
    if json_output:
        print_json(entry)
        return
    _print_identity(entry)
    from fslm.cli.run import render_result

    render_result(as_result(entry), show_inputs)
    if entry.get("error"):
        console.print(Text("failed: ", style="bold red") + Text(str(entry["error"])))


def _print_identity(entry: dict[str, Any]) -> None:
    from fslm.logs.entries import local_time

    engine = entry.get("engine") or {}
    rows = [("run", f"{entry['id']} · {entry['kind']} · {local_time(entry['created'])}")]
    if entry.get("request_id"):
        rows.append(("request", entry["request_id"]))
    if entry.get("stack"):
        rows.append(("stack", f"{entry['stack']} (config sha256 {str(entry.get('config_sha256'))[:12]})"))
    rows.append(("engine", f"{engine.get('model_ref')} · {engine.get('dtype')}"))
    for stage, digest in (entry.get("adapters") or {}).items():
        rows.append((f"adapter {stage}", f"sha256 {str(digest)[:12]}"))
    rows.append(
        (
            "cost",
            f"{entry.get('tokens_in') or 0} tok in · {entry.get('tokens_out') or 0} tok out · "
            f"{entry.get('wall_seconds') or 0:.2f} s",
        )
    )
    if entry.get("truncated"):
        rows.append(("note", "some texts were longer than FSLM_LOG_MAX_CHARS and are stored cut"))
    table = Table(show_header=False, box=None)
    for name, value in rows:  # Text: a stack or model name is never read as rich markup
        table.add_row(Text(name, style="dim"), Text(str(value)))
    out.print(table)
    out.print(Text("prompt: ", style="dim") + Text(entry.get("prompt") or ""))


def as_result(entry: dict[str, Any]):
    """A logged entry as the StackResult `render_result` draws. The trace may come from an older or newer fslm:
    fields the record classes do not know are left out, required ones the entry lacks are neutral, lists are
    tuples again."""
    from fslm.stack import StackResult, StageRecord

    records = [_build(StageRecord, stage) for stage in entry.get("trace") or () if isinstance(stage, dict)]
    result = _build(StackResult, {**entry, "trace": []})
    result.trace = records
    return result


NEUTRAL = {"stage": "?", "input": "", "output": "", "tokens_in": 0, "tokens_out": 0, "seconds": 0.0, "prompt": ""}


def _build(cls: type, values: dict[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name in values and values[f.name] is not None:
            value = values[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) and isinstance(f.default, tuple) else value
        elif required:
            kwargs[f.name] = NEUTRAL.get(f.name, "")
    return cls(**kwargs)


@app.command("search")
@guarded
def search_command(
    text: str = typer.Argument(..., help="Words that must all occur (in prompt, answer, stage outputs or error)."),
    limit: int = LIMIT,
    json_output: bool = typer.Option(False, "--json", help="One JSON summary per line instead of a table."),
) -> None:
    """Find runs by their text: every word must occur (full-text search where SQLite has FTS5, else substrings)."""
    check_text(text, "TEXT")
    _print_runs(search_runs(text, _check_limit(limit)), json_output, f"matching {text!r}", f"no run matches {text!r}")


@app.command("export")
@guarded
def export_command(
    jsonl: bool = typer.Option(True, "--jsonl", help="One JSON entry per line, oldest first (the only format)."),
    since: str | None = typer.Option(None, "--since", help="Only runs from this ISO date or time on (local time)."),
    out_file: Path | None = typer.Option(None, "--out", "-o", help="Write here (whole, then renamed) not stdout."),
) -> None:
    """Export the log as JSON lines: every field of every run, stage inputs and outputs included."""
    from fslm.logs import export_runs, parse_since

    start = parse_since(since) if since is not None else None
    if out_file is None:
        export_runs(None, since=start)
        return
    check_output(out_file, "--out", folder=False)
    count = export_runs(out_file, since=start)
    console.print(f"exported {count} runs to {out_file}", highlight=False)


@app.command("rm")
@guarded
def rm_command(run_ids: list[str] = typer.Argument(..., help="Ids of the runs to remove.")) -> None:
    """Remove runs by id (nothing is removed if one of the ids is not in the log)."""
    from fslm.logs import remove_runs

    gone = remove_runs([check_text(i, "ID") for i in run_ids])
    console.print(f"removed {gone} run{'s' * (gone != 1)}", highlight=False)


@app.command("prune")
@guarded
def prune_command(
    older_than: float | None = typer.Option(None, "--older-than", help="Remove runs older than this many days."),
    keep: int | None = typer.Option(None, "--keep", help="Remove all but the newest N runs."),
) -> None:
    """Remove old runs: those older than --older-than DAYS and/or all but the newest --keep N."""
    from fslm.logs import prune_runs

    gone = prune_runs(older_than_days=older_than, keep=keep)
    console.print(f"removed {gone} run{'s' * (gone != 1)}", highlight=False)


@app.command("path")
@guarded
def path_command() -> None:
    """Print where runs are logged (FSLM_LOG_DB; default <cache dir>/logs.db) and whether logging is on."""
    from fslm.logs import log_path
    from fslm.settings import get_settings

    out.print(str(log_path()), highlight=False, markup=False, soft_wrap=True)
    if not get_settings().log:
        console.print("note: logging is off (FSLM_LOG=0)", style="dim", highlight=False)
