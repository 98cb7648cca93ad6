"""The stage graph: order, waves, conditions, and the config errors that name the field."""

from __future__ import annotations

import copy

import pytest

from fslm.config import parse_stack_config
from fslm.errors import ConfigError
from fslm.stages.graph import find_cycle, run_cases, topological_order, waves


def test_list_order_is_kept_when_it_is_a_valid_order():
    sees = {"a": [], "b": ["a"], "c": [], "d": ["b", "c"]}
    assert topological_order(list(sees), sees) == ["a", "b", "c", "d"]
    assert waves(["a", "b", "c", "d"], sees) == [["a", "c"], ["b"], ["d"]]


def test_stable_topological_order_when_a_stage_sees_a_later_one():
    sees = {"answer": ["notes"], "intent": [], "notes": ["intent"]}
    assert topological_order(list(sees), sees) == ["intent", "notes", "answer"]


def test_cycles_are_found_as_a_path():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    assert find_cycle({"a": [], "b": ["a"], "c": ["a", "b"]}) is None
    chain = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(5000)}  # deep graphs: no recursion limit
    assert find_cycle(chain) is None and topological_order(list(chain), chain)[-1] == "s4999"


def test_run_cases_follow_what_a_stage_sees():
    sees = {"calc": [], "answer": ["calc"], "pick": []}
    when = {"calc": "no_options", "answer": None, "pick": "has_options"}
    cases = run_cases(["calc", "answer", "pick"], sees, when)
    assert cases == {
        "calc": frozenset({"no_options"}),
        "answer": frozenset({"no_options"}),  # sees a stage that runs only without options
        "pick": frozenset({"has_options"}),
    }


def stage(name, sees=("prompt",), **extra):
    return {"name": name, "instruction": f"Do {name}.", "sees": list(sees), **extra}


BRANCHED = {
    "name": "branched",
    "base_model": "tiny",
    "stages": [
        stage("facts"),
        stage("pick", ["prompt", "facts"], score={"format": "chat"}, when="has_options", final=True),
        {"name": "calc", "sees": ["prompt"], "tool": {}, "when": "no_options"},
        stage("answer", ["prompt", "facts", "calc"], final=True),
    ],
}


def test_a_branched_stack_validates_and_says_who_answers():
    cfg = parse_stack_config(BRANCHED)
    assert [s.kind for s in cfg.stages] == ["generate", "score", "tool", "generate"]
    assert cfg.waves() == [["facts", "calc"], ["pick", "answer"]]
    assert cfg.answer_stage_for("has_options").name == "pick"
    assert cfg.answer_stage_for("no_options").name == "answer"
    assert cfg.unread_stages() == []


def mutated(fn):
    data = copy.deepcopy(BRANCHED)
    fn(data)
    return data


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["stages"][3].update(sees=["prompt", "nope"]),
            "stages.3.sees.1: 'nope' is not 'prompt' or a stage",
        ),
        (lambda d: d["stages"][0].update(sees=["answer"]), "stages.0.sees.0: the stages see each other in a cycle"),
        (lambda d: d["stages"][0].update(sees=["facts"]), "cycle (facts -> facts)"),
        (lambda d: d["stages"][1].update(when="no_options"), "stages.1.when: score stage 'pick'"),
        (lambda d: d["stages"][1].update(sees=["calc"]), "stages.1.sees: score stage 'pick'"),
        (lambda d: d["stages"][3].update(when="has_options"), "no final stage runs on prompts without options"),
        (lambda d: d["stages"][2].update(final=True), "stages.2.final: a tool stage cannot give the answer"),
        (lambda d: d["stages"][2].update(score={}), "stages.2: score, tool: a stage has one kind"),
        (lambda d: d["stages"][2].update(model="other"), "stages.2: model: a tool stage runs no model"),
        (lambda d: d["stages"][1].update(teacher_prompt="x"), "teacher_prompt: a score stage generates nothing"),
        (lambda d: d["stages"][1].update(when="sometimes"), "stages.1.when"),
        (lambda d: d["stages"][1].update(score={"format": "logits"}), "stages.1.score.format"),
        (lambda d: d["stages"][2].update(tool={"name": "shell"}), "stages.2.tool.name"),
        (lambda d: d["stages"][1].pop("instruction"), "stages.1: instruction: required for a model stage"),
    ],
)
def test_graph_errors_name_the_field(mutate, expected):
    with pytest.raises(ConfigError) as err:
        parse_stack_config(mutated(mutate), "s.yaml")
    assert expected in str(err.value) and "s.yaml" in str(err.value)


def test_raw_score_stage_needs_no_instruction():
    cfg = parse_stack_config(mutated(lambda d: d["stages"][1].update(score={"format": "raw"}, instruction="")))
    assert cfg.stages[1].score.format == "raw"


def test_old_rule_without_final_flags_is_the_last_stage():
    data = mutated(lambda d: [s.pop("final", None) for s in d["stages"]])
    with pytest.raises(ConfigError, match="no final stage runs on prompts with options"):
        parse_stack_config(data)  # only 'answer' is final now, and it sees calc (no_options only)


def test_stage_models_are_listed_once_base_first():
    data = mutated(lambda d: (d["stages"][0].update(model="big"), d["stages"][3].update(model="big")))
    cfg = parse_stack_config(data)
    assert cfg.models == ["tiny", "big"] and cfg.stage_model(cfg.stages[1]) == "tiny"


def test_unknown_stage_model_is_reported_by_validate(tmp_path):
    import yaml

    from fslm.stack_checks import validate_stack

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(mutated(lambda d: d["stages"][0].update(model="no-such-model-xyz"))))
    with pytest.raises(ConfigError, match=r"stages\.0\.model: unknown model 'no-such-model-xyz'"):
        validate_stack(path)


def test_unset_graph_fields_leave_dumps_as_they_were():
    """Digests of existing stacks (distillation identity, eval config hashes) are computed from dumps."""
    cfg = parse_stack_config({"name": "old", "stages": [stage("answer")]})
    assert list(cfg.stages[0].model_dump()) == [
        "name",
        "instruction",
        "template",
        "sees",
        "generation",
        "adapter",
        "label",
        "teacher_prompt",
        "max_target_tokens",
        "retrieve",
    ]
    assert "final" not in cfg.to_yaml() and "when" not in cfg.to_yaml()
    branched = parse_stack_config(BRANCHED)
    again = parse_stack_config(__import__("yaml").safe_load(branched.to_yaml()))
    assert again.model_dump() == branched.model_dump() and again.stages[1].final and again.stages[1].score


def test_the_documented_example_validates():
    import re
    from pathlib import Path

    import yaml

    doc = (Path(__file__).parents[2] / "docs" / "stacks.md").read_text()
    cfg = parse_stack_config(yaml.safe_load(re.search(r"```yaml\n(.*?)```", doc, re.S).group(1)), "docs/stacks.md")
    assert cfg.waves() == [["facts", "calc"], ["pick", "answer"]]
    assert [s.kind for s in cfg.stages] == ["generate", "score", "tool", "generate"]
    assert (cfg.answer_stage_for("has_options").name, cfg.answer_stage_for("no_options").name) == ("pick", "answer")
