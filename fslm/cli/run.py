"""`fslm run`: answer one prompt with a stack and show every stage."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.panel import Panel
from rich.text import Text

from fslm.cli.common import check_engine, check_stack, engine_option, out, print_json, status
from fslm.logs import logged_run
from fslm.stack import Stack, StackResult, check_prompt_text


def render_result(result: StackResult, show_inputs: bool = False) -> None:
    for i, rec in enumerate(result.trace, 1):
        if rec.skipped is not None:  # a branch that did not run: one dim line, not an empty panel
            out.print(Text(f"{i}. {rec.stage}: skipped ({rec.skipped})", style="dim"))
            continue
        body = Text()
        if show_inputs:
            body.append("input:\n", style="dim")
            body.append(rec.input + "\n\n", style="dim")
        body.append(rec.output or "(empty)")
        if rec.decision:  # vote: how the drafts voted; escalate: which branch ran and why
            body.append(f"\n{rec.decision}", style="dim")
        subtitle = f"{rec.tokens_in} tok in · {rec.tokens_out} tok out · {rec.seconds:.2f}s" + (
            f" · adapter {rec.adapter}" if rec.adapter else ""
        )
        out.print(
            Panel(
                body,
                title=f"[bold]{i}. {rec.stage}[/]",
                subtitle=subtitle,
                title_align="left",
                subtitle_align="right",
                border_style="cyan",
            )
        )
    out.print(
        Panel(
            Text(result.answer or "(empty)", style="bold"),
            title="[bold green]answer[/]",
            title_align="left",
            border_style="green",
        )
    )


def run_command(
    prompt: str = typer.Argument(..., help="The question or instruction to answer."),
    stack: Path | None = typer.Option(None, "--stack", "-s", help="Stack YAML (default: the packaged 4-stage stack)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object {answer, trace} instead of panels."),
    show_inputs: bool = typer.Option(False, "--inputs", help="Also show the exact text each stage was given."),
    no_adapters: bool = typer.Option(False, "--no-adapters", help="Run the stack prompt-only (its LoRA adapters off)."),
    engine: str | None = engine_option(
        help="Inference engine (default: the stack's `engine:`): hf, llamacpp, vllm or auto."
    ),
    no_log: bool = typer.Option(False, "--no-log", help="Do not write this run to the run log (`fslm logs`)."),
) -> None:
    """Answer PROMPT with a stack and print the answer and every stage's text."""
    prompt = check_prompt_text(prompt)  # before the model loads: a bad prompt or stack file costs no load
    cfg = check_stack(stack, adapters=not no_adapters, engine=engine)
    check_engine(engine or cfg.engine)
    with status("loading stack and model…", enabled=True):
        loaded = Stack.load(stack, adapters=not no_adapters, backend=engine)
    with status(f"running {len(loaded.config.stages)} stages…", enabled=not json_output):
        result = logged_run(loaded, prompt, log=not no_log)
    if json_output:
        print_json(result.to_dict())
    else:
        render_result(result, show_inputs)
