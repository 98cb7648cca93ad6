"""`fslm pairs`: raw-scoring pairs for `fslm.finetune.finetune_pairs` (Python twin: `fslm.finetune.pairs`)."""

from __future__ import annotations

from pathlib import Path

import typer

from fslm.cli.common import check_output, default_of, guarded, out, print_json, status
from fslm.finetune.pairs import write_scoring_pairs  # for its defaults (no torch)


@guarded
def pairs_command(
    stack: Path = typer.Option(
        ..., "--stack", help="The stack the pairs are for: when its first stage retrieves, its passages come first."
    ),
    out_path: Path = typer.Option(..., "--out", help="Pairs JSONL to write ({id, task, context, continuation})."),
    records: int = typer.Option(..., "--records", min=1, help="Questions in all, an equal share per choice task."),
    tasks: list[str] | None = typer.Option(None, "--task", help="Task to draw from (repeatable; default: all)."),
    seed: int = typer.Option(default_of(write_scoring_pairs, "seed"), "--seed"),
    heldout_keep: int = typer.Option(
        default_of(write_scoring_pairs, "heldout_keep"),
        "--heldout-keep",
        min=0,
        help="Held-out items per task never drawn.",
    ),
    eval_reserve: int = typer.Option(
        default_of(write_scoring_pairs, "eval_reserve"),
        "--eval-reserve",
        min=1,
        help="Evaluated items per task (the head of each split) never drawn.",
    ),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Write choice questions no evaluation reads as raw-scoring pairs for `fslm finetune --pairs`."""
    from fslm.finetune.pairs import write_scoring_pairs

    check_output(out_path, "--out", folder=False)
    with status("drawing questions and retrieving their passages…", enabled=not json_output):
        report = write_scoring_pairs(
            stack, out_path, records, tasks, seed=seed, heldout_keep=heldout_keep, eval_reserve=eval_reserve
        )
    if json_output:
        print_json(report.to_dict())
        return
    per_task = ", ".join(f"{task} {n}" for task, n in report.per_task.items())
    out.print(f"{report.pairs} pairs written to {out_path} ({per_task})")
