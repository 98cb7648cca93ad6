"""`fslm cascade`: small system first, large system only when the small one is unsure.

`fslm cascade "prompt" --small A --large B` runs live (same as `fslm cascade run`); `calibrate`, `eval` and `signals`
work on `fslm eval` per-item runs.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fslm.cli.common import (
    RunByDefault,
    check_model,
    check_output,
    check_stack,
    default_of,
    guarded,
    out,
    print_json,
    status,
)
from fslm.collaborate.cascade import calibrate_runs  # for their defaults (no torch)
from fslm.collaborate.live import System as LiveSystem
from fslm.collaborate.live import cascade_items

app = typer.Typer(
    cls=RunByDefault, no_args_is_help=True, help="Cascade: escalate to a larger system when the small one is unsure."
)

SMALL_RUN = typer.Option(..., "--small", help="Small system's `fslm eval` run folder (or its items.jsonl).")
LARGE_RUN = typer.Option(..., "--large", help="Large system's `fslm eval` run folder on the same items.")
SIGNALS = typer.Option(
    None, "--signals", help="Signals JSONL from `fslm cascade signals` (needed for --signal verify)."
)


def check_system(ref: str, what: str) -> None:
    """A system reference as `System` reads it: a stack YAML (by its suffix) or a model reference; nothing loads."""
    if ref.endswith((".yaml", ".yml")):
        check_stack(ref)
    else:
        check_model(ref, what)


def _points_table(title: str, rows: list[tuple[str, dict]]) -> Table:
    table = Table(title=title)
    for col in ("system", "accuracy", "compute share", "escalated"):
        table.add_column(col)
    for name, p in rows:
        table.add_row(name, f"{p['acc']:.3f}", f"{p['compute_share']:.3f}", f"{p['escalation_rate']:.1%}")
    return table


@app.command("run")
@guarded
def run_command(
    prompts: list[str] | None = typer.Argument(None, help="Prompts to answer (omit with --task)."),
    small: str = typer.Option(..., "--small", help="Small system: model reference or stack YAML."),
    large: str = typer.Option(..., "--large", help="Large system: model reference or stack YAML."),
    threshold: float | None = typer.Option(None, "--threshold", help="Escalate when confidence < this, in [0, 1]."),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="Take signal and threshold from `fslm cascade calibrate`."
    ),
    signal: str = typer.Option(
        default_of(cascade_items, "signal"),
        "--signal",
        help="verify (any prompt) or margin (multiple-choice --task only).",
    ),
    task: str | None = typer.Option(None, "--task", help="Run on a multiple-choice task's items instead of prompts."),
    split: str | None = typer.Option(None, "--split"),
    limit: int | None = typer.Option(None, "--limit", min=1),
    out_dir: Path | None = typer.Option(None, "--out", help="Write items.jsonl + summary.json here (with --task)."),
    max_new_tokens: int = typer.Option(default_of(LiveSystem, "max_new_tokens"), "--max-new-tokens", min=1),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Answer with the small system; escalate low-confidence answers to the large one."""
    from fslm.collaborate.cascade import SIGNALS, Calibration
    from fslm.collaborate.live import System, cascade_items, cascade_prompts
    from fslm.errors import InputError
    from fslm.io import write_json, write_jsonl
    from fslm.stack import check_prompt_text
    from fslm.stages.calibration import check_threshold

    if calibration is not None:
        cal = Calibration.load(calibration)
        signal, threshold = cal.signal, cal.threshold if threshold is None else threshold
    if threshold is None:
        raise InputError("give --threshold T (in [0, 1]) or --calibration FILE from `fslm cascade calibrate`")
    check_threshold(threshold)
    if signal not in SIGNALS:
        raise InputError(f"unknown signal {signal!r}; choose one of {', '.join(SIGNALS)}")
    if task and prompts:
        raise InputError("give prompts or --task NAME, not both")
    if not task and not prompts:
        raise InputError("give one or more prompts, or --task NAME for multiple-choice items")
    if not task and signal != "verify":
        raise InputError("free-text prompts have no choice margin; use --signal verify (or --task for margin)")
    if not task and out_dir is not None:
        raise InputError("--out writes per-item results of a --task run; with prompts, use --json")
    for prompt in prompts or []:
        check_prompt_text(prompt)
    if task:  # the items before the models: a wrong task name or split costs no load
        from fslm.tasks import load_task

        items = load_task(task, split=split, limit=limit)
    check_system(small, "--small")
    check_system(large, "--large")
    if out_dir is not None:
        check_output(out_dir, "--out", folder=True)
    with status("loading systems…", enabled=not json_output):
        small_sys = System(small, max_new_tokens=max_new_tokens)
        large_sys = System(large, max_new_tokens=max_new_tokens)
    if task:
        with status(f"cascading {len(items)} items…", enabled=not json_output):
            rows, summary = cascade_items(items, small_sys, large_sys, signal=signal, threshold=threshold)
        if out_dir is not None:
            write_jsonl(out_dir / "items.jsonl", rows)
            write_json(out_dir / "summary.json", summary)
        if json_output:
            print_json(summary)
        else:
            out.print(
                f"{task}: accuracy {summary['acc']:.3f} on {summary['n']} items, escalated {summary['escalation_rate']:.1%}"
            )
        return
    with status("answering…", enabled=not json_output):
        results = cascade_prompts(prompts or [], small_sys, large_sys, threshold)
    if json_output:
        print_json([r.to_dict() for r in results])
        return
    for r in results:
        who = (
            f"[yellow]large[/] (small confidence {r.confidence:.2f} < {threshold})"
            if r.escalated
            else f"[green]small[/] (confidence {r.confidence:.2f})"
        )
        out.print(f"[bold]{r.prompt}[/]\n  answered by {who}\n  {r.answer}")


@app.command("calibrate")
@guarded
def calibrate_command(
    small: Path = SMALL_RUN,
    large: Path = LARGE_RUN,
    signal: str = typer.Option(
        default_of(calibrate_runs, "signal"),
        "--signal",
        help="margin (choice probability margin) or verify (self-verification).",
    ),
    target: float = typer.Option(
        default_of(calibrate_runs, "target"), "--target", help="Keep this fraction of the large system's accuracy."
    ),
    signals: Path | None = SIGNALS,
    out_file: Path | None = typer.Option(None, "--out", help="Write the calibration JSON here."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Choose the cheapest threshold reaching TARGET x the large system's accuracy on calibration (dev/train) runs."""
    from fslm.collaborate.cascade import calibrate_runs

    cal = calibrate_runs(small, large, signal=signal, target=target, signals=signals, out=out_file)
    if json_output:
        print_json(cal.to_dict())
        return
    met = "" if cal.met else "  [red](target not reached: most accurate threshold shown)[/]"
    out.print(f"signal {cal.signal}: escalate when < [bold]{cal.threshold:.4f}[/] on {cal.n} calibration items{met}")
    out.print(
        f"accuracy {cal.acc:.3f} (small {cal.small_acc:.3f}, large {cal.large_acc:.3f}, target {cal.target:.0%} of large) "
        f"at compute share {cal.compute_share:.3f}, escalating {cal.escalation_rate:.1%}"
    )


@app.command("eval")
@guarded
def eval_command(
    small: Path = SMALL_RUN,
    large: Path = LARGE_RUN,
    calibration: Path = typer.Option(..., "--calibration", help="From `fslm cascade calibrate` (on OTHER items)."),
    signals: Path | None = SIGNALS,
    out_dir: Path | None = typer.Option(None, "--out", help="Write cascade.json, cascade.md and cascade.png here."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """The calibrated cascade on report items vs always-small, always-large and random escalation."""
    from fslm.collaborate.cascade import evaluate_runs

    report = evaluate_runs(small, large, calibration, signals=signals, out_dir=out_dir)
    if json_output:
        print_json({k: v for k, v in report.items() if k != "points"})
        return
    rows = [
        ("always small", report["always_small"]),
        ("always large", report["always_large"]),
        (f"cascade ({report['signal']})", report["calibrated"]),
        ("random, same rate", report["random_same_rate"]),
    ]
    out.print(_points_table(f"cascade on {report['n']} items", rows))


@app.command("signals")
@guarded
def signals_command(
    run: Path = typer.Option(..., "--run", help="The small system's `fslm eval` run whose answers get verified."),
    model: str = typer.Option(..., "--model", "-m", help="Verifier model (AutoMix: the small model itself)."),
    split: str | None = typer.Option(
        None, "--split", help="Split the run was evaluated on (default: the one its summary.json names, else eval)."
    ),
    out_file: Path = typer.Option(..., "--out", help="Signals JSONL to write."),
) -> None:
    """Self-verification: P(yes) that the small answer is correct, per item of a run (for --signal verify)."""
    from fslm.collaborate.live import run_items, verify_signal_rows
    from fslm.collaborate.runs import read_run
    from fslm.engine import load_engine
    from fslm.io import write_jsonl

    small_run = read_run(run)
    items = run_items(small_run, split)  # before the model: a bad split costs no load
    check_model(model, "--model")
    check_output(out_file, "--out", folder=False)
    with status(f"verifying {len(small_run.rows)} answers with {model}…"):
        engine = load_engine(model)
        rows = verify_signal_rows(engine, items, small_run.rows)
    write_jsonl(out_file, rows)
    out.print(f"wrote {len(rows)} verification signals to {out_file}")
