"""`fslm models`: what model references resolve on this machine."""

from __future__ import annotations

import typer
from rich.table import Table

from fslm.cli.common import out, print_json
from fslm.models import list_models


def models_command(json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the models resolvable offline: name, source, parameters, cached or not."""
    infos = list_models()
    if json_output:
        print_json([info.__dict__ for info in infos])
        return
    table = Table(title="models")
    for col in ("name", "source", "params", "cached", "note"):
        table.add_column(col)
    for info in infos:
        params = f"{info.params / 1e6:.1f}M" if info.params else "?"
        style = None if info.available else "dim"
        table.add_row(info.name, info.source, params, "yes" if info.cached else "no", info.note, style=style)
    out.print(table)
