"""The `fslm` command: a thin typer layer over the Python API (one module per verb)."""

from __future__ import annotations

import typer

from fslm.cli import models as _models
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
app.command("run")(guarded(_run.run_command))
app.command("serve")(guarded(_serve.serve_command))
app.command("models")(guarded(_models.models_command))
app.add_typer(_stack.app, name="stack")
from fslm.cli import eval as _eval; app.add_typer(_eval.app, name="eval")  # noqa: E402,E702
from fslm.cli import cascade as _cascade, generate as _generate, route as _route  # noqa: E402 (collaboration verbs)
app.command("generate")(guarded(_generate.generate_command))
app.add_typer(_cascade.app, name="cascade")
app.add_typer(_route.app, name="route")
from fslm.cli import distill as _distill, finetune as _finetune  # noqa: E402 (distillation verbs)
app.command("distill")(guarded(_distill.distill_command))
app.command("finetune")(guarded(_finetune.finetune_command))


def main() -> None:
    app()
