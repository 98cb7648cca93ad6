"""Stack YAML under fuzzing: any bytes, and valid stacks with one field broken, load or fail with one ConfigError."""

from __future__ import annotations

import copy
import time

import yaml
from fuzzing import FUZZ, NASTY, broken, loads_or_fails_cleanly, mutated
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fslm.cli import app
from fslm.config import MAX_STACK_BYTES, StackConfig, default_stack_path, load_stack_config
from fslm.errors import ConfigError

DEFAULT = default_stack_path().read_bytes()
GOOD = yaml.safe_load(DEFAULT)


def _load(tmp_path, content: bytes) -> StackConfig | None:
    path = tmp_path / "stack.yaml"
    path.write_bytes(content)
    return loads_or_fails_cleanly(lambda: load_stack_config(path), path, ConfigError)


@FUZZ
@given(st.binary(max_size=400) | st.sampled_from(NASTY))
def test_any_bytes(tmp_path, content):
    _load(tmp_path, content)


@FUZZ
@given(mutated(DEFAULT))
def test_edited_default_stack(tmp_path, content):
    _load(tmp_path, content)


@FUZZ
@given(broken(GOOD))
def test_stacks_with_broken_fields(tmp_path, data):
    text = yaml.safe_dump(data, allow_unicode=False)  # lone surrogates become "\ud800" escapes, as a user may write
    cfg = _load(tmp_path, text.encode("utf-8"))
    if cfg is not None:  # whatever validates must serialise again: nothing unprintable got through
        cfg.to_yaml().encode("utf-8")


def test_alias_bomb_fails_fast_from_the_cli(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["stack", "validate", str(bomb)])
    assert result.exit_code == 2, result.output
    assert time.monotonic() - started < 10
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bomb) in errors[0] and "expands to more than" in errors[0], result.output
    assert "Traceback" not in result.output


def test_oversized_stack_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"name: x\ndescription: '" + b"x" * MAX_STACK_BYTES + b"'\n")
    try:
        load_stack_config(path)
    except ConfigError as err:
        assert str(path) in str(err) and "larger than 1 MiB" in str(err)
    else:
        raise AssertionError("a stack file over the cap loaded")


def test_many_problems_are_cut_to_the_first_few(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nstages: [" + ", ".join(["1"] * 10_000) + "]\n")
    try:
        load_stack_config(path)
    except ConfigError as err:
        assert "stages.0" in str(err) and "... and 9980 more" in str(err) and len(str(err)) < 5000
    else:
        raise AssertionError("10k integer stages validated")


def test_long_bad_values_are_cut_in_the_message(tmp_path):
    data = copy.deepcopy(GOOD)
    data["stages"][0]["name"] = "X" * 10_000
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_stack_config(path)
    except ConfigError as err:
        assert "stages.0.name" in str(err) and len(str(err)) < 1000
    else:
        raise AssertionError("a bad name validated")
