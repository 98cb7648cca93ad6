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
    ],
)
def test_more_options_default_to_their_library_function(cli, command, owner, names):
    import importlib

    module, func = owner.split(":")
    library = inspect.signature(getattr(importlib.import_module(module), func)).parameters
    got = cli_defaults(getattr(importlib.import_module(cli), command))
    assert {n: got[n] for n in names} == {n: library[n].default for n in names}
