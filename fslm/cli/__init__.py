"""The `fslm` command: a thin typer layer over the Python API (one module per verb)."""

from __future__ import annotations

import typer

from fslm.cli import cascade as _cascade
from fslm.cli import distill as _distill
from fslm.cli import eval as _eval
from fslm.cli import finetune as _finetune
from fslm.cli import generate as _generate
from fslm.cli import models as _models
from fslm.cli import route as _route
from fslm.cli import run as _run
from fslm.cli import serve as _serve
from fslm.cli import stack as _stack
from fslm.cli.common import guarded

app = typer.Typer(
    name="fslm",
    help="Build, distill, fine-tune, evaluate and serve stacks of small language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# The core loop: run a stack, build one (distill -> finetune), measure it, serve it.
app.command("run")(guarded(_run.run_command))
app.command("models")(guarded(_models.models_command))
app.add_typer(_stack.app, name="stack")
app.command("distill")(guarded(_distill.distill_command))
app.command("finetune")(guarded(_finetune.finetune_command))
app.add_typer(_eval.app, name="eval")
app.command("serve")(guarded(_serve.serve_command))
# Small/large collaboration.
app.command("generate")(guarded(_generate.generate_command))
app.add_typer(_cascade.app, name="cascade")
app.add_typer(_route.app, name="route")


def main() -> None:
    app()
