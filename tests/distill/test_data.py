"""Alpaca input: both formats, ids, and bad data that fails with the record/line named (exit code 2 in the CLI)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fslm.cli import app
from fslm.errors import DataError
from fslm.tasks.instructions import default_data_path, load_instructions

from .conftest import ALPACA, write_alpaca


def test_json_list_and_jsonl_give_the_same_records(tmp_path):
    as_list, dup_a = load_instructions(write_alpaca(tmp_path / "a.json", ALPACA))
    as_lines, dup_b = load_instructions(write_alpaca(tmp_path / "a.jsonl", ALPACA, jsonl=True))
    assert as_list == as_lines and dup_a == dup_b == 0
    assert len(as_list) == len(ALPACA) and len({r.id for r in as_list}) == len(ALPACA)
    planet = next(r for r in as_list if r.instruction == "Name a planet.")
    assert planet.input == "" and planet.prompt == "Name a planet."  # Alpaca's <noinput> placeholder means no input
    tone = next(r for r in as_list if r.input)
    assert tone.prompt == "Classify the tone of this sentence.\n\nShe always finds a way."
    assert next(r for r in as_list if r.instruction.startswith("Write a haiku")).gold is None


def test_ids_are_content_hashes_or_given_and_duplicates_are_dropped(tmp_path):
    records = [ALPACA[0], ALPACA[1], dict(ALPACA[0]), {**ALPACA[2], "id": 7}]
    items, duplicates = load_instructions(write_alpaca(tmp_path / "d.jsonl", records, jsonl=True))
    assert duplicates == 1 and [i.index for i in items] == [0, 1, 3] and items[2].id == "7"
    reordered, _ = load_instructions(write_alpaca(tmp_path / "r.jsonl", [ALPACA[1], ALPACA[0]], jsonl=True))
    assert {i.id for i in reordered} == {items[0].id, items[1].id}  # ids survive re-ordering
    limited, _ = load_instructions(tmp_path / "d.jsonl", limit=2)
    assert [i.index for i in limited] == [0, 1]


def test_the_real_alpaca_file_loads_via_settings():
    path = default_data_path()
    if not path.is_file():
        pytest.skip(f"no Alpaca data at {path}")
    items, duplicates = load_instructions(path)
    assert len(items) + duplicates == 9229
    assert all(i.instruction for i in items) and sum(i.gold is not None for i in items) > 9000


BAD = {
    "missing_field": (
        b'{"instruction": "a", "output": "b"}\n{"input": "x", "output": "y"}\n',
        "line 2",
        "missing required field 'instruction'",
    ),
    "wrong_type": (
        b'[\n {"instruction": "a", "output": "b"},\n {"instruction": "c",\n  "output": 5}\n]',
        "record 2 (line 3)",
        "'output' must be a string, got int",
    ),
    "not_an_object": (b'["just a string"]', "record 1", "expected a JSON object"),
    "empty_file": (b"   \n", "empty file", "JSON list or JSONL"),
    "non_utf8": (
        b'{"instruction": "a", "output": "b"}\n\n{"instruction": "caf\xe9", "output": "x"}\n',
        "line 3",
        "not UTF-8",
    ),
    "malformed_jsonl": (
        b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n',
        "line 2",
        "malformed JSON",
    ),
    "malformed_list": (b'[{"instruction": "a", "output": "b"} {"instruction": "c"}]', "line 1", "expected ',' or ']'"),
    "empty_instruction": (b'{"instruction": "  ", "output": "b"}\n', "record 1 (line 1)", "'instruction' is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_names_the_record_and_line(tmp_path, case):
    content, where, what = BAD[case]
    path = tmp_path / f"{case}.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_instructions(path)
    assert str(path) in str(err.value) and where in str(err.value) and what in str(err.value)


@pytest.mark.parametrize("case", ["missing_field", "wrong_type", "empty_file", "non_utf8"])
def test_cli_exits_2_on_bad_data_without_traceback(tmp_path, stack_file, case):
    content, where, what = BAD[case]
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    result = CliRunner().invoke(
        app, ["distill", "--stack", str(stack_file), "--data", str(path), "--out", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 2, result.output
    assert where in result.output and what in result.output and "Traceback" not in result.output
    assert "loading teacher" not in result.output  # data is validated before any model is loaded


def test_missing_data_file_and_bad_teacher_prompt(tmp_path, stack_file):
    result = CliRunner().invoke(app, ["distill", "--stack", str(stack_file), "--data", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and "data file not found" in result.output
    bad = stack_file.read_text().replace("{intent}", "{reasoning}")
    (tmp_path / "bad.yaml").write_text(bad)
    result = CliRunner().invoke(app, ["distill", "--stack", str(tmp_path / "bad.yaml"), "--data", str(stack_file)])
    assert result.exit_code == 2 and "stages.1.teacher_prompt: placeholder {reasoning}" in result.output, result.output


def test_jsonl_record_line_numbers_skip_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(ALPACA[0]) + "\n\n" + json.dumps({"instruction": 3}) + "\n")
    with pytest.raises(DataError, match=r"record 2 \(line 3\).*'instruction' must be a string"):
        load_instructions(path)
