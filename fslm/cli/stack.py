"""`fslm stack ...`: check, inspect and pack stack files."""

from __future__ import annotations

from pathlib import Path

import typer

from fslm.cli.common import guarded, out
from fslm.config import default_stack_path, load_stack_config, validate_stack

app = typer.Typer(help="Check, inspect and pack stack configs.", no_args_is_help=True)


@app.command("validate")
@guarded
def validate_command(path: Path = typer.Argument(..., help="Stack YAML file to check.")) -> None:
    """Validate a stack file: schema, stage references, templates and adapter folders."""
    cfg = validate_stack(path)
    out.print(
        f"[green]ok[/] {path}: stack {cfg.name!r}, {len(cfg.stages)} stages ({', '.join(s.name for s in cfg.stages)}) on {cfg.base_model}"
    )
    for name in cfg.unread_stages():
        out.print(
            f"[yellow]note:[/] no later stage reads the text of stage {name!r} (it runs, and shows in the trace, "
            "but cannot change the answer); add it to a later stage's `sees` or remove it",
            highlight=False,
        )


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
