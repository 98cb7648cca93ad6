"""Redistilling one role (`reuse` + `redo`): only the named stages are asked again; the rest come from the earlier file."""

from __future__ import annotations

import json

import pytest
import yaml

from fslm.distill import DistillOptions, distill
from fslm.errors import ConfigError
from fslm.teachers import TeacherReply

from .conftest import read_lines, tiny_stack, write_alpaca

RECORDS = [
    {"instruction": "What is two plus two?", "input": "", "output": "Four."},
    {"instruction": "Name a colour of the sky.", "input": "", "output": "Blue."},
    {"instruction": "Name a large planet.", "input": "", "output": "Jupiter."},
]


class CountingTeacher:
    """Answers each stage (its system message) with a fixed text and counts the requests per stage."""

    id = "counting"

    def __init__(self, texts: dict[str, str]):
        self.texts, self.asked = texts, {k: 0 for k in texts}

    def generate(self, requests, params):
        for msgs in requests:
            self.asked[msgs[0]["content"]] += 1
        return [TeacherReply(self.texts[msgs[0]["content"]], 0.0, "stop") for msgs in requests]

    def close(self) -> None:
        pass


@pytest.fixture()
def world(tmp_path, tiny_model_dir):
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump(tiny_stack(tiny_model_dir)))
    data = write_alpaca(tmp_path / "a.json", RECORDS)
    first = tmp_path / "first.jsonl"
    distill(stack, data, first, teacher=CountingTeacher({"Restate.": "A question.", "Facts.": "Old facts."}))
    return stack, data, first


def test_redo_asks_only_the_named_stage_and_keeps_the_others(world, tmp_path):
    stack, data, first = world
    rows = read_lines(first)
    rows[2]["kept"], rows[2]["filtered"] = False, ["facts:too_long"]  # a record the first run dropped
    first.write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = CountingTeacher({"Restate.": "Restated.", "Facts.": "New facts."})
    out = tmp_path / "second.jsonl"
    distill(stack, data, out, teacher=teacher, options=DistillOptions(reuse=first, redo=["facts"]))
    second = {r["id"]: r for r in read_lines(out)}
    assert teacher.asked == {"Restate.": 1, "Facts.": 3}  # intent only for the record the first run did not keep
    for old in rows[:2]:
        new = second[old["id"]]
        assert new["targets"]["intent"] == old["targets"]["intent"] == "A question."
        assert new["targets"]["facts"] == "New facts." and new["reused"] == ["answer", "intent"] and new["kept"]
    dropped = second[rows[2]["id"]]
    assert dropped["targets"]["intent"] == "Restated." and "reused" not in dropped


def test_redo_needs_reuse_and_known_stages(world, tmp_path):
    stack, data, first = world
    teacher = CountingTeacher({"Restate.": "x", "Facts.": "y"})
    with pytest.raises(ConfigError, match="--redo needs --reuse"):
        distill(stack, data, tmp_path / "o.jsonl", teacher=teacher, options=DistillOptions(redo=["facts"]))
    with pytest.raises(ConfigError, match=r"--redo: expected one or more of the stages .*'fact'"):
        distill(stack, data, tmp_path / "o.jsonl", teacher=teacher, options=DistillOptions(reuse=first, redo=["fact"]))
    with pytest.raises(ConfigError, match="no such distilled file"):
        distill(
            stack,
            data,
            tmp_path / "o.jsonl",
            teacher=teacher,
            options=DistillOptions(reuse=tmp_path / "nope.jsonl", redo=["facts"]),
        )
    assert sum(teacher.asked.values()) == 0


def test_cli_redo_without_reuse_exits_2_before_loading_a_teacher(world, tmp_path):
    from typer.testing import CliRunner

    from fslm.cli import app

    stack, data, first = world
    result = CliRunner().invoke(
        app,
        ["distill", "--stack", str(stack), "--data", str(data), "--out", str(tmp_path / "o.jsonl"), "--redo", "facts"],
    )
    assert result.exit_code == 2 and "--redo needs --reuse" in result.output and "loading teacher" not in result.output
    ok = CliRunner().invoke(
        app,
        [
            "distill",
            "--stack",
            str(stack),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--reuse",
            str(first),
            "--redo",
            "facts",
            "--teacher",
            str(stack.parent / "missing-model"),
            "--json",
        ],
    )
    assert ok.exit_code == 2 and "missing-model" in ok.output, (
        ok.output
    )  # past the option checks: fails on the unknown teacher
