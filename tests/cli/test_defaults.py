"""Each CLI default lives once: options read it from the library type that owns it (fslm.cli.common.default_of)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pytest
from pydantic import BaseModel, Field

from fslm.cli.common import default_of


@dataclass
class Options:
    size: int = 3
    names: list[str] = field(default_factory=lambda: ["a"])
    required: int = 0


class Settings(BaseModel):
    port: int = Field(8000, ge=0)
    name: str


def run(x: int, *, limit: int = 5) -> None: ...


def test_default_of_reads_dataclasses_pydantic_models_and_signatures():
    assert default_of(Options, "size") == 3 and default_of(Options, "names") == ["a"]
    assert default_of(Settings, "port") == 8000
    assert default_of(run, "limit") == 5


@pytest.mark.parametrize(("owner", "name"), [(Options, "sise"), (Settings, "name"), (run, "x"), (run, "nope")])
def test_a_missing_default_fails_loudly(owner, name):
    with pytest.raises(TypeError, match=f"no default for '{name}'"):
        default_of(owner, name)


def cli_defaults(command) -> dict[str, object]:
    params = inspect.signature(command).parameters.items()
    return {name: p.default.default for name, p in params if p.default is not inspect.Parameter.empty}


def test_serve_options_default_to_serve_settings():
    from fslm.cli.serve import serve_command
    from fslm.serve.config import ServeSettings

    got = cli_defaults(serve_command)
    names = ["host", "port", "max_batch", "batch_wait_ms", "batch_max_wait_ms", "queue_size", "max_new_tokens"]
    names += ["max_body_bytes", "trace", "trace_history"]
    assert {n: got[n] for n in names} == {n: ServeSettings.model_fields[n].default for n in names}
    assert got["host"] == "127.0.0.1"  # safe by default


def test_distill_options_default_to_the_library():
    from fslm.cli.distill import distill_command
    from fslm.distill import DistillOptions
    from fslm.teachers import HTTPTeacher

    got = cli_defaults(distill_command)
    teacher = inspect.signature(HTTPTeacher).parameters
    assert got["concurrency"] == teacher["concurrency"].default and got["timeout"] == teacher["timeout"].default
    assert got["batch_size"] == DistillOptions().batch_size


@pytest.mark.parametrize(
    ("cli", "command", "owner", "names"),
    [
        ("fslm.cli.eval", "eval_command", "fslm.evaluate.run:evaluate", ["batch_size"]),
        ("fslm.cli.pairs", "pairs_command", "fslm.finetune.pairs:write_scoring_pairs", ["seed", "heldout_keep"]),
        ("fslm.cli.route", "train_command", "fslm.collaborate.route:train_runs", ["target", "c"]),
        ("fslm.cli.retrieve", "search_command", "fslm.retrieve.index:search", ["k"]),
        ("fslm.cli.generate", "generate_command", "fslm.collaborate.generate:generate", ["alpha", "max_new_tokens"]),
        ("fslm.cli.eval", "eval_command", "fslm.evaluate.run:evaluate", ["num_fewshot"]),
        ("fslm.cli.pairs", "pairs_command", "fslm.finetune.pairs:write_scoring_pairs", ["eval_reserve"]),
        ("fslm.cli.retrieve", "corpus_command", "fslm.retrieve.corpus:write_corpus", ["heldout_keep"]),
        ("fslm.cli.retrieve", "index_command", "fslm.retrieve.index:index_passages", ["kind"]),
        ("fslm.cli.cascade", "run_command", "fslm.collaborate.live:cascade_items", ["signal"]),
        ("fslm.cli.cascade", "calibrate_command", "fslm.collaborate.cascade:calibrate_runs", ["signal", "target"]),
        ("fslm.cli.logs", "list_command", "fslm.logs:list_runs", ["limit"]),
        ("fslm.cli.logs", "search_command", "fslm.logs:search_runs", ["limit"]),
        ("fslm.cli.experiment", "run_command", "fslm.experiment.run:run_experiment", ["jobs"]),
        ("fslm.cli.serve", "serve_command", "fslm.serve.app:serve", ["log_level"]),
        ("fslm.cli.synth", "synth_command", "fslm.teachers:make_teacher", ["engine:backend", "teacher_dtype:dtype"]),
        ("fslm.cli.distill", "distill_command", "fslm.teachers:make_teacher", ["engine:backend"]),
    ],
)
def test_more_options_default_to_their_library_function(cli, command, owner, names):
    import importlib

    module, func = owner.split(":")
    library = inspect.signature(getattr(importlib.import_module(module), func)).parameters
    got = cli_defaults(getattr(importlib.import_module(cli), command))
    pairs = [name.partition(":")[::2] for name in names]  # "option:parameter" where the two names differ
    assert {o: got[o] for o, _ in pairs} == {o: library[p or o].default for o, p in pairs}


def test_make_teacher_leaves_the_http_defaults_to_http_teacher():
    from fslm.teachers import HTTPTeacher, make_teacher

    teacher = make_teacher(url="http://127.0.0.1:1/v1", model="m")
    assert teacher.client.concurrency == default_of(HTTPTeacher, "concurrency")
    assert teacher.client.timeout_seconds == default_of(HTTPTeacher, "timeout")
    assert make_teacher(url="http://127.0.0.1:1/v1", model="m", concurrency=2).client.concurrency == 2


def literal_defaults(path) -> list[str]:
    """Options (typer.Option, engine_option) whose default is a number or text written in the CLI module itself."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        func = node.func if isinstance(node, ast.Call) else None
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("Option", "engine_option") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and type(first.value) in (int, float, str):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(first)}")
    return found


def test_no_cli_option_writes_its_default_as_a_literal(tmp_path):
    """Flags (True/False), None, required (...) and empty lists are the CLI's own; a number or a name is the
    library's, read with default_of."""
    from pathlib import Path

    import fslm.cli

    found = [f for path in sorted(Path(fslm.cli.__file__).parent.glob("*.py")) for f in literal_defaults(path)]
    assert found == []
    bad = tmp_path / "bad.py"
    bad.write_text('import typer\nx = typer.Option(300, "--n")\ny = engine_option("hf")\nz = typer.Option(False)\n')
    assert literal_defaults(bad) == ["bad.py:2 300", "bad.py:3 'hf'"]
