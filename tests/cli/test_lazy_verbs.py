"""Verbs load on first use: `fslm --help` and `fslm models` import no ML/web stack, and lose no help text."""

import json
import subprocess
import sys

import click
import click.testing
import typer
from typer.testing import CliRunner

from fslm.cli import VERBS, app

HEAVY = ("torch", "transformers", "peft", "fastapi", "uvicorn", "httpx", "matplotlib")


def test_help_and_models_import_nothing_heavy():
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from fslm.cli import app\n"
        "codes = [CliRunner().invoke(app, args).exit_code for args in (['--help'], ['models', '--json'])]\n"
        f"print(json.dumps({{'codes': codes, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0], "heavy": []}


def test_listed_summaries_match_the_loaded_commands():
    group = typer.main.get_command(app)
    runner = click.testing.CliRunner()
    listed = runner.invoke(group, ["--help"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0
    ctx = click.Context(group, info_name="fslm")
    assert group.list_commands(ctx) == list(VERBS)
    for name in VERBS:
        loaded = group.load(name)
        assert (loaded.help or "").split("\n\n")[0].strip() == VERBS[name].summary, name
        group.commands[name] = loaded
    assert runner.invoke(group, ["--help"], env={"COLUMNS": "200"}).output == listed.output  # same screen, all loaded


def test_verb_help_and_unknown_verb():
    runner = CliRunner()
    shown = runner.invoke(app, ["finetune", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "--max-length" in shown.output and "Fine-tune one LoRA adapter" in shown.output
    wrong = runner.invoke(app, ["fintune"])
    assert wrong.exit_code == 2 and "No such command" in wrong.output
