"""`without_stage` / `keep_stages`: ablation stacks derived from a config, for the issue-5 recipe and users."""

from __future__ import annotations

import pytest

from fslm.config import keep_stages, parse_stack_config, without_stage
from fslm.errors import ConfigError


def four_stage_chain():
    """The shape of the full-scale reproduction's trained stack: intent, facts, reasoning, answer."""
    return parse_stack_config(
        {
            "name": "chain",
            "stages": [
                {"name": "intent", "instruction": "Restate.", "teacher_prompt": "Restate {prompt}"},
                {"name": "facts", "instruction": "Facts.", "teacher_prompt": "Facts for {prompt}"},
                {
                    "name": "reasoning",
                    "instruction": "Reason.",
                    "sees": ["prompt", "intent", "facts"],
                    "teacher_prompt": "Key facts: {facts}. Answer: {answer}",
                },
                {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "facts", "reasoning"]},
            ],
        }
    )


def test_removing_a_stage_updates_later_sees_and_keeps_the_rest():
    cfg = four_stage_chain()
    no_facts = without_stage(cfg, "facts")
    assert [s.name for s in no_facts.stages] == ["intent", "reasoning", "answer"]
    assert no_facts.stages[1].sees == ["prompt", "intent"] and no_facts.stages[2].sees == ["prompt", "reasoning"]
    assert no_facts.stages[1].teacher_prompt is None  # it named {facts}
    assert no_facts.stages[0] == cfg.stages[0] and no_facts.source_path == cfg.source_path
    assert [s.name for s in cfg.stages] == ["intent", "facts", "reasoning", "answer"]  # the input is untouched
    two = keep_stages(cfg, ["facts", "answer"])
    assert [(s.name, s.sees) for s in two.stages] == [("facts", ["prompt"]), ("answer", ["prompt", "facts"])]


def test_a_stage_left_seeing_nothing_sees_the_prompt():
    cfg = parse_stack_config(
        {
            "name": "x",
            "stages": [
                {"name": "a", "instruction": "A."},
                {"name": "b", "instruction": "B.", "sees": ["a"]},
                {"name": "c", "instruction": "C.", "sees": ["b"]},
            ],
        }
    )
    assert without_stage(cfg, "a").stages[0].sees == ["prompt"]


def test_errors_name_the_problem():
    cfg = four_stage_chain()
    with pytest.raises(ConfigError, match="final"):
        without_stage(cfg, "answer")
    with pytest.raises(ConfigError, match="no stage 'nope'"):
        without_stage(cfg, "nope")
    with pytest.raises(ConfigError, match="no stage"):
        keep_stages(cfg, ["facts"] + ["zzz"])
    templated = parse_stack_config(
        {
            "name": "x",
            "stages": [
                {"name": "a", "instruction": "A."},
                {"name": "b", "instruction": "B.", "sees": ["prompt", "a"], "template": "{prompt} / {a}"},
            ],
        }
    )
    with pytest.raises(ConfigError, match=r"template uses \{a\}"):
        without_stage(templated, "a")


def test_unread_stages_are_those_no_later_stage_reads():
    cfg = four_stage_chain()
    assert cfg.unread_stages() == []
    # intent is read by reasoning only: once reasoning is gone nothing reads it (the pilot's "without reasoning")
    assert without_stage(cfg, "reasoning").unread_stages() == ["intent"]
    assert without_stage(cfg, "facts").unread_stages() == []
    chain = parse_stack_config(
        {
            "name": "x",
            "stages": [
                {"name": "a", "instruction": "A."},
                {"name": "b", "instruction": "B."},
                {"name": "c", "instruction": "C.", "sees": ["prompt", "b"], "template": "{prompt} / {b}"},
            ],
        }
    )
    assert chain.unread_stages() == ["a"]
