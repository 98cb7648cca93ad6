"""`fslm experiment run SPEC.yaml [--jobs N] [--status]`: a thin layer over `fslm.experiment.run_experiment`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from fslm.cli.common import console, default_of, guarded, out
from fslm.errors import InputError
from fslm.experiment.run import run_experiment  # for its defaults (no torch)

app = typer.Typer(
    help="Run an experiment from one YAML spec: train, evaluate, compare, report; reruns resume.",
    no_args_is_help=True,
)


@app.callback()
def _group() -> None:
    # a group even with one command, so the verb reads `fslm experiment run ...` (more commands can follow)
    pass


STYLES = {"done": "green", "partial": "yellow", "running": "cyan", "not started": "dim", "stale": "magenta"}


def status_table(plan) -> Table:
    """Jobs × state: done / partial n/N / running / not started, with the macro accuracy of finished runs."""
    table = Table(title=Text(f"{plan.spec.name} → {plan.spec.out_dir}"), title_justify="left")
    for col in ("job", "name", "state", "macro %", "s/item"):
        table.add_column(col, justify="right" if col in ("macro %", "s/item") else "left")
    for job in plan.jobs.values():
        summary = job.summary or {}
        macro = summary.get("macro_acc")
        table.add_row(
            job.kind,
            job.name,
            Text(job.progress, style=STYLES.get(job.state, "")),  # Text: no markup read from names or paths
            "" if macro is None else f"{100 * macro:.1f}",
            str(summary.get("cost", {}).get("seconds_per_item", "")),
        )
    return table


def parse_settings(settings: list[str]) -> dict:
    """`KEY=VALUE` pairs; each value is read as YAML (40 -> int, [a, b] -> list, text -> str)."""
    import yaml

    overrides = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. --set evaluation.limit=40")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(f"--set {item!r}: the value is not valid YAML") from None
    return overrides


@app.command("run")
@guarded
def run_command(
    spec: Path = typer.Argument(..., help="Experiment spec (YAML); see docs/experiment.md."),
    jobs: int = typer.Option(
        default_of(run_experiment, "jobs"), "--jobs", "-j", help="Jobs run side by side, each in its own process."
    ),
    status: bool = typer.Option(False, "--status", help="Only show what is done, partial or not started."),
    settings: list[str] = typer.Option(
        [], "--set", help="Override a spec field: --set evaluation.limit=40 (value read as YAML). Repeatable."
    ),
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="Results folder (default: the spec's `out`)."),
) -> None:
    """Run what the experiment still needs (each system's evaluation in its own process), then write RESULTS.md,
    results.json and pareto.png in its folder. A rerun resumes; a finished experiment starts no process."""
    from fslm.experiment import ExperimentError

    overrides = parse_settings(settings)
    if out_dir is not None:
        overrides["out"] = str(out_dir.resolve())  # relative to where the command runs, not to the spec file
    try:
        result = run_experiment(
            spec,
            jobs=jobs,
            status=status,
            overrides=overrides,
            log=lambda message: console.print(message, style="dim", highlight=False),
        )
    except ExperimentError as err:
        out.print(status_table(err.result.plan))
        raise
    out.print(status_table(result.plan))
    if result.report is not None:
        out.print(f"[green]report[/] {result.report}", highlight=False)
