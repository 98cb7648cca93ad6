"""Distillation with a local (tiny) teacher: hints, final targets, resume, records exactly once."""

from __future__ import annotations

from fslm.config import load_stack_config
from fslm.distill import DistillOptions, distill, teacher_messages
from fslm.stack import generation_params, stage_messages
from fslm.tasks.instructions import load_instructions
from fslm.teachers import LocalTeacher

from .conftest import read_lines


def test_distill_writes_every_record_once_with_hints_and_resumes(tiny_engine, stack_file, alpaca_file, tmp_path):
    out = tmp_path / "d.jsonl"
    teacher = LocalTeacher(tiny_engine)
    seen = []
    report = distill(
        stack_file,
        alpaca_file,
        out,
        teacher=teacher,
        options=DistillOptions(batch_size=4),
        progress=lambda d, t: seen.append((d, t)),
    )
    items, _ = load_instructions(alpaca_file)
    lines = read_lines(out)
    assert [r["id"] for r in lines] == [i.id for i in items] and report.written == len(items) == report.records
    assert seen[0] == (0, len(items)) and seen[-1] == (len(items), len(items))
    assert report.kept == sum(r["kept"] for r in lines)
    assert sum(report.filtered.values()) >= len(items) - report.kept  # every dropped record has a counted reason
    cfg = load_stack_config(stack_file)
    for rec, item in zip(lines, items):
        assert rec["teacher"] == teacher.id and rec["stack"] == "tiny" and rec["hinted"] == (item.gold is not None)
        assert rec["kept"] == (not rec["filtered"]) and rec["seconds"]["total"] >= 0
        if rec["kept"] and rec["hinted"]:
            assert rec["targets"]["answer"] == item.gold  # answer-hinted: the final target IS the gold output
        if rec["targets"].get("intent") is not None and not rec["filtered"][:1] == ["answer:too_long"]:
            # the intermediate target is what the teacher writes for the hinted prompt (greedy batch == one by one)
            msgs = teacher_messages(cfg, 0, item.prompt, {}, item.gold)
            again = teacher.generate([msgs], generation_params(cfg.stages[0]))[0].text
            assert rec["targets"]["intent"] == again
    unhinted = next(r for r in lines if not r["hinted"])
    assert "answer" in unhinted["targets"] or unhinted["filtered"]  # no gold: the teacher writes the answer too

    again = distill(
        stack_file, alpaca_file, out, teacher=lambda: (_ for _ in ()).throw(AssertionError("teacher not needed"))
    )
    assert again.written == 0 and again.already_done == len(items) and read_lines(out) == lines


def test_teacher_prompts_carry_the_hint_and_fall_back_without_gold(tiny_model_dir, stack_file):
    cfg = load_stack_config(stack_file)
    hinted = teacher_messages(cfg, 1, "What is 2 plus 2?", {"intent": "The user wants a sum."}, "The sum is 4.")
    assert hinted[0]["content"] == "Facts." and hinted[1]["content"] == (
        "Question: What is 2 plus 2?\nIntent: The user wants a sum.\nAnswer: The sum is 4.\nList the facts."
    )
    # no gold: the teacher plays the stage exactly as the student will see it
    assert teacher_messages(cfg, 1, "Q?", {"intent": "I"}, None) == stage_messages(cfg, 1, "Q?", {"intent": "I"})
    # a stage without teacher_prompt gets the student's input plus the hint
    plain = cfg.model_copy(update={"stages": [s.model_copy(update={"teacher_prompt": None}) for s in cfg.stages]})
    msgs = teacher_messages(plain, 0, "Q?", {}, "Gold.")
    assert (
        msgs[1]["content"].startswith(stage_messages(plain, 0, "Q?", {})[1]["content"])
        and "Gold." in msgs[1]["content"]
    )
