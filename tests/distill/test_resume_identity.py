"""A resumed distillation must have been started the same way: other prompts or another teacher are refused."""

from __future__ import annotations

import json

import pytest
import yaml

from fslm.config import StackConfig
from fslm.distill import DistillOptions, distill
from fslm.distill.runner import distill_identity
from fslm.distill.store import identity_path
from fslm.errors import DataError

from .conftest import read_lines, tiny_stack, write_alpaca
from .test_reuse import RECORDS, CountingTeacher

TEXTS = {"Restate.": "A question.", "Facts.": "Some facts."}


@pytest.fixture()
def world(tmp_path, tiny_model_dir):
    cfg = tiny_stack(tiny_model_dir)
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump(cfg))
    return cfg, stack, write_alpaca(tmp_path / "a.json", RECORDS), tmp_path / "out.jsonl"


def test_resume_with_the_same_setup_finishes_the_file(world):
    _, stack, data, out = world
    distill(stack, data, out, teacher=CountingTeacher(TEXTS), options=DistillOptions(limit=2))
    teacher = CountingTeacher(TEXTS)
    report = distill(stack, data, out, teacher=teacher)
    assert report.already_done == 2 and report.written == 1
    assert teacher.asked == {"Restate.": 1, "Facts.": 1}
    assert len(read_lines(out)) == 3
    assert json.loads(identity_path(out).read_text())["stages"].keys() == {
        s["name"] for s in yaml.safe_load(stack.read_text())["stages"]
    }


def test_resume_after_a_teacher_prompt_changed_is_refused_and_names_the_stage(world):
    cfg, stack, data, out = world
    distill(stack, data, out, teacher=CountingTeacher(TEXTS), options=DistillOptions(limit=2))
    before = out.read_bytes()
    cfg["stages"][1]["teacher_prompt"] = "Question: {prompt}\n\nState one key fact."
    stack.write_text(yaml.safe_dump(cfg))
    teacher = CountingTeacher(TEXTS)
    with pytest.raises(DataError) as err:
        distill(stack, data, out, teacher=teacher)
    message = str(err.value)
    assert str(out) in message and "stages differs for facts" in message and "--redo" in message
    assert sum(teacher.asked.values()) == 0 and out.read_bytes() == before  # nothing asked, nothing written


def test_resume_with_other_options_is_refused(world):
    _, stack, data, out = world
    distill(stack, data, out, teacher=CountingTeacher(TEXTS), options=DistillOptions(limit=1))
    with pytest.raises(DataError, match="options differs for hints"):
        distill(stack, data, out, teacher=CountingTeacher(TEXTS), options=DistillOptions(hints=False))


def test_resume_with_another_teacher_is_refused(world):
    _, stack, data, out = world
    distill(stack, data, out, teacher=CountingTeacher(TEXTS), options=DistillOptions(limit=1))
    other = CountingTeacher(TEXTS)
    other.id = "another-teacher"
    with pytest.raises(DataError, match="written by counting, not another-teacher"):
        distill(stack, data, out, teacher=other)
    assert len(read_lines(out)) == 1


def test_a_file_from_before_sidecars_adopts_the_current_setup(world):
    _, stack, data, out = world
    distill(stack, data, out, teacher=CountingTeacher(TEXTS), options=DistillOptions(limit=1))
    identity_path(out).unlink()
    report = distill(stack, data, out, teacher=CountingTeacher(TEXTS))
    assert report.already_done == 1 and report.written == 2 and identity_path(out).is_file()


def test_stage_digests_are_stable_across_versions(tiny_model_dir):
    """Pinned: files distilled by earlier versions must still resume. A new optional stage field (such as `retrieve`)
    must leave model stages' digests alone; change these values only with a note that old files need --redo."""
    cfg = StackConfig.model_validate(tiny_stack(tiny_model_dir))
    assert distill_identity(cfg, DistillOptions())["stages"] == {
        "intent": "f348071a1f7d4c08",
        "facts": "6572a7892d2d315a",
        "answer": "996bed2a5dbe3bc0",
    }
