"""Config of the verify, vote and escalate kinds and of confidence conditions: what validates, and errors that name
the field; a stack mixing every kind gives the same outputs in a batch as one by one."""

from __future__ import annotations

import copy

import pytest

from fslm.config import check_chain, parse_stack_config
from fslm.errors import ConfigError

ALL = {
    "name": "all",
    "base_model": "tiny",
    "stages": [
        {"name": "draft", "instruction": "Think.", "generation": {"max_new_tokens": 4}},
        {"name": "pick", "instruction": "Answer.", "sees": ["prompt", "draft"], "score": {}, "when": "has_options"},
        {
            "name": "vpick",
            "instruction": "Answer.",
            "sees": ["prompt", "draft"],
            "score": {"format": "raw"},
            "vote": {"k": 2, "temperature": 1.0, "over": "draft"},
            "when": "has_options",
        },
        {
            "name": "answer",
            "instruction": "Answer.",
            "when": "no_options",
            "generation": {"max_new_tokens": 5},
            "vote": {"k": 3},
            "final": True,
        },
        {"name": "check", "sees": ["prompt", "answer"], "verify": {}},
        {
            "name": "retry",
            "instruction": "Answer again.",
            "when": {"confidence_of": "check", "below": 0.5},
            "generation": {"max_new_tokens": 4},
            "final": True,
        },
        {
            "name": "big",
            "model": "big",
            "instruction": "Answer.",
            "escalate": {"confidence_of": "vpick", "threshold": 0.9},
            "final": True,
        },
    ],
}


def test_every_kind_validates_and_the_graph_follows_references():
    cfg = parse_stack_config(ALL)
    assert [s.kind for s in cfg.stages] == ["generate", "score", "vote", "vote", "verify", "generate", "escalate"]
    assert cfg.stage("check").verify.candidate == "answer"  # the last stage it sees
    assert cfg.stage("big").escalate.answer == "vpick" and cfg.stage("big").needs == ["vpick"]
    assert cfg.waves() == [["draft", "answer"], ["pick", "vpick", "check"], ["retry", "big"]]
    assert cfg.scores_options(cfg.stage("big")) and not cfg.scores_options(cfg.stage("answer"))
    assert cfg.models == ["tiny", "big"]
    assert cfg.answer_stage_for("has_options").name == "big"
    assert cfg.answer_stage_for("no_options").name == "retry"  # when it runs; else 'answer' answers
    import yaml

    again = parse_stack_config(yaml.safe_load(cfg.to_yaml()))
    assert again.model_dump() == cfg.model_dump()


def test_a_stack_of_every_kind_batches_like_one_by_one(tiny_engine):
    from fslm.stack import Stack

    from .counting import Counting

    prompts = [
        "Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nC. helium",
        "What is the capital of France?",
        "Which planet is largest?\nA. Mars\nB. Jupiter",
        "Two plus two?",
    ]
    stack = Stack(parse_stack_config(ALL), tiny_engine, engines={"big": Counting(tiny_engine, model_ref="big")})
    batch = stack.run_batch(prompts)
    alone = [stack.run(p) for p in prompts]
    strip = lambda r: [{k: v for k, v in d.items() if k != "seconds"} for d in r.to_dict()["trace"]]  # noqa: E731
    for b, a in zip(batch, alone, strict=True):
        _close(strip(b), strip(a))
        assert b.answer == a.answer and b.answer_stage == a.answer_stage
    assert [r.answer_stage for r in batch][0] == "big" and batch[1].answer_stage in ("answer", "retry")


def _close(a, b):
    """Equal traces, option scores and confidences to 1e-4 (a batched forward pass may differ in the last bits)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in x:
            if key in ("option_scores", "confidence") and x[key] is not None:
                assert x[key] == pytest.approx(y[key], abs=1e-4), key
            elif key == "output" and x["kind"] == "verify" and x[key]:
                assert float(x[key]) == pytest.approx(float(y[key]), abs=2e-4)
            else:
                assert x[key] == y[key], key


def mutated(fn):
    data = copy.deepcopy(ALL)
    fn(data)
    return data


S = lambda d, i: d["stages"][i]  # noqa: E731


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: S(d, 6)["escalate"].update(threshold=1.5), "stages.6.escalate.threshold: Input should be less"),
        (lambda d: S(d, 6)["escalate"].update(threshold=-0.1), "stages.6.escalate.threshold: Input should be greater"),
        (lambda d: S(d, 6)["escalate"].update(calibration="c.json"), "threshold, calibration: give exactly one"),
        (
            lambda d: S(d, 5).update(when={"confidence_of": "check", "below": 2}),
            "stages.5.when.below: Input should be less than or equal to 1",
        ),
        (lambda d: S(d, 5).update(when={"confidence_of": "check"}), "below, above: give exactly one threshold"),
        (
            lambda d: S(d, 6)["escalate"].update(confidence_of="nope"),
            "stages.6.escalate.confidence_of: 'nope' is not a",
        ),
        (
            lambda d: S(d, 6)["escalate"].update(confidence_of="draft"),
            "stages.6.escalate.confidence_of: stage 'draft' is a generate stage, which has no confidence",
        ),
        (
            lambda d: S(d, 5).update(when={"confidence_of": "draft", "below": 0.5}),
            "stages.5.when.confidence_of: stage 'draft' is a generate stage, which has no confidence",
        ),
        (lambda d: S(d, 6).pop("model"), "stages.6.escalate: escalate stage 'big' has no larger system"),
        (lambda d: S(d, 6)["escalate"].update(stack="big.yaml"), "stages.6.model: escalate stage 'big' runs the stack"),
        (lambda d: S(d, 6)["escalate"].update(answer="check"), "stages.6.escalate.answer: 'check' is a verify stage"),
        (lambda d: S(d, 4).update(sees=["prompt"]), "stages.4.verify.candidate: verify stage 'check' judges"),
        (
            lambda d: S(d, 4)["verify"].update(candidate="draft", yes=" no"),
            "yes, no: the two continuations must differ",
        ),
        (lambda d: S(d, 4)["verify"].update(temperature=0), "stages.4.verify.temperature: Input should be greater"),
        (lambda d: S(d, 4)["verify"].update(format="chat"), "stages.4: instruction: required for a model stage"),
        (lambda d: S(d, 3)["vote"].update(temperature=0), "stages.3.vote: temperature: 0 gives 3 identical drafts"),
        (lambda d: S(d, 3)["vote"].update(k=0), "stages.3.vote.k: Input should be greater"),
        (lambda d: S(d, 3)["vote"].update(over="draft"), "stages.3.vote.over: a vote over another stage's drafts"),
        (lambda d: S(d, 2)["vote"].pop("over"), "stages.2.vote.over: a score stage's vote needs `over`"),
        (lambda d: S(d, 2)["vote"].update(over="pick"), "stages.2.vote.over: 'pick' must be a generate stage"),
        (lambda d: S(d, 2).update(tool={}), "stages.2: score, tool, vote: a stage has one kind"),
        (lambda d: S(d, 4).update(final=True), "stages.4.final: a verify stage cannot give the answer"),
        (lambda d: S(d, 2).update(when="no_options"), "stages.2.when: vote stage 'vpick' picks among the prompt's"),
        (
            lambda d: S(d, 3).update(when={"confidence_of": "check", "above": 0.1}),
            "stages.3.when.confidence_of: the stages see each other in a cycle (answer -> check -> answer)",
        ),
        (lambda d: S(d, 3).pop("final"), "no final stage runs on prompts without options"),
        (lambda d: S(d, 6).update(teacher_prompt="x"), "teacher_prompt: a escalate stage is not distilled"),
    ],
)
def test_bad_config_errors_name_the_field(mutate, expected):
    with pytest.raises(ConfigError) as err:
        parse_stack_config(mutated(mutate), "s.yaml")
    assert expected in str(err.value) and "s.yaml" in str(err.value)


def test_old_when_strings_stay_valid():
    cfg = parse_stack_config(ALL)
    assert cfg.stage("pick").when == "has_options" and cfg.stage("answer").option_case == "no_options"
    assert cfg.stage("retry").option_case is None and cfg.stage("retry").when.below == 0.5


@pytest.mark.parametrize("name", ["vpick", "check", "big", "answer"])
def test_distill_and_finetune_refuse_the_new_kinds(name):
    cfg = parse_stack_config(ALL)
    kind = cfg.stage(name).kind
    with pytest.raises(ConfigError, match=rf"is a {kind} stage: distill handles generate and retrieve stages only"):
        check_chain(cfg.model_copy(update={"stages": [cfg.stage(name)]}), "distill")


def test_a_confidence_condition_is_refused_by_check_chain():
    data = {
        "name": "c",
        "stages": [
            {"name": "a", "instruction": "A.", "vote": {"k": 1, "temperature": 0}},
            {"name": "b", "instruction": "B.", "when": {"confidence_of": "a", "above": 0.5}},
            {"name": "c", "instruction": "C.", "final": True},
        ],
    }
    cfg = parse_stack_config(data)
    with pytest.raises(ConfigError, match=r"stages\.0\.when: finetune runs every stage on the base model, always"):
        check_chain(cfg.model_copy(update={"stages": cfg.stages[1:]}), "finetune")


def test_every_yaml_block_of_the_docs_validates():
    import re
    from pathlib import Path

    import yaml

    doc = (Path(__file__).parents[2] / "docs" / "stacks.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    configs = {b["name"]: parse_stack_config(b, "docs/stacks.md") for b in blocks}
    kinds = {s.kind for cfg in configs.values() for s in cfg.stages}
    assert {"verify", "vote", "escalate", "score", "tool", "generate"} <= kinds
    assert configs["escalating"].stage("large").escalate.answer == "pick"
    assert configs["retry_when_unsure"].stage("retry").when.below == 0.3
