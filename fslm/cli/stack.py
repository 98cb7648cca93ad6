"""`fslm stack ...`: check, inspect and pack stack files."""

from __future__ import annotations

from pathlib import Path

import typer

from fslm.cli.common import guarded, out
from fslm.config import StackConfig, default_stack_path, load_stack_config
from fslm.stack_checks import validate_stack

app = typer.Typer(help="Check, inspect and pack stack configs.", no_args_is_help=True)


@app.command("validate")
@guarded
def validate_command(path: Path = typer.Argument(..., help="Stack YAML file to check, or 'default'.")) -> None:
    """Validate a stack file: schema, the stage graph (references, cycles, conditions), templates, stage models,
    adapter and index folders."""
    if str(path) == "default" and not path.exists():  # the packaged stack, as --stack default names it elsewhere
        path = default_stack_path()
    cfg = validate_stack(path)
    out.print(
        f"[green]ok[/] {path}: stack {cfg.name!r}, {len(cfg.stages)} stages ({', '.join(s.name for s in cfg.stages)}) on {cfg.base_model}",
        highlight=False,
    )
    for line in graph_notes(cfg):
        out.print(line, highlight=False, markup=False)
    for name in cfg.unread_stages():
        out.print(
            f"[yellow]note:[/] no later stage reads the text of stage {name!r} (it runs, and shows in the trace, "
            "but cannot change the answer); add it to another stage's `sees` or remove it",
            highlight=False,
        )
    for stage in cfg.stages:
        if cfg.scores_options(stage) and cfg.run_cases()[stage.name] == {"has_options", "no_options"}:
            out.print(
                f"[yellow]note:[/] {stage.kind} stage {stage.name!r} has no `when: has_options`: a prompt without "
                "options is an error for this stack (with it, the stage is skipped)",
                highlight=False,
            )


def graph_notes(cfg: StackConfig) -> list[str]:
    """What runs when: the waves (stages of one wave run side by side), the models, and who answers which prompt."""
    kinds = {s.name: s.kind for s in cfg.stages}
    waves = " -> ".join(
        "[" + ", ".join(n if kinds[n] == "generate" else f"{n} ({kinds[n]})" for n in wave) + "]"
        for wave in cfg.waves()
    )
    lines = [f"  runs: {waves}"]
    if len(cfg.models) > 1:
        lines.append(f"  models: {', '.join(cfg.models)}")
    on_servers = [s.name for s in cfg.stages if cfg.stage_endpoint(s) is not None]
    if on_servers:
        urls = sorted({cfg.stage_endpoint(s).base_url for s in cfg.stages if s.name in on_servers})  # type: ignore[union-attr]
        lines.append(f"  endpoint: {', '.join(on_servers)} run on {', '.join(urls)} (not contacted by validate)")
    for stage in cfg.stages:
        if stage.escalate is not None:
            esc = stage.escalate
            bound = esc.threshold if esc.threshold is not None else f"the threshold in {esc.calibration}"
            larger = f"stack {esc.stack}" if esc.stack else f"model {stage.model}"
            lines.append(
                f"  escalate: {stage.name} answers with {larger} when the confidence of {esc.confidence_of!r} is "
                f"below {bound}, else keeps {esc.answer!r}"
            )
    with_options, without = cfg.answer_stage_for("has_options"), cfg.answer_stage_for("no_options")
    if with_options.name == without.name:
        lines.append(f"  answer: {with_options.name}")
    else:
        lines.append(f"  answer: {with_options.name} (prompts with options), {without.name} (prompts without)")
    return lines


@app.command("show")
@guarded
def show_command(path: Path = typer.Argument(None, help="Stack YAML (default: the packaged default stack).")) -> None:
    """Print a stack config (the packaged default when no path is given)."""
    cfg = load_stack_config(path or default_stack_path())
    out.print(cfg.to_yaml(), highlight=False, markup=False)


@app.command("pack")
@guarded
def pack_command(
    run_dir: Path = typer.Argument(..., help="A trained-stack folder (with stack.yaml) or a stack YAML file."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="New folder for the self-contained stack."),
) -> None:
    """Copy a trained stack and the adapters and indexes it runs into one folder with relative paths, so it moves."""
    from fslm.stack_pack import pack_stack, packed_size

    path = pack_stack(run_dir, out_dir)
    out.print(f"[green]packed[/] {path} ({packed_size(out_dir) / 1e6:.2f} MB)", highlight=False)
