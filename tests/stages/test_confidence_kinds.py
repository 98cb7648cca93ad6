"""verify, escalate and confidence conditions, run on tiny random models (a second one plays the larger model)."""

from __future__ import annotations

import copy
import math

import pytest
from conftest import build_tiny_model  # tests/conftest.py (tests/ is on sys.path under pytest)

from fslm.config import load_stack_config, parse_stack_config
from fslm.errors import ConfigError
from fslm.stack import Stack
from fslm.stages.conditions import choice_margin
from fslm.stages.kinds_config import VERIFY_QUESTION

from .counting import Counting

MC = [
    "Which gas do plants take in?\n\nOptions:\nA. oxygen\nB. carbon dioxide\nC. helium",
    "Which planet is largest?\nA. Mars\nB. Jupiter",
    "What is two plus two?\nA. four\nB. five\nC. three\nD. ten",
    "Where is Paris?\nA. France\nB. Spain",
    "Which animal has eight legs?\nA. a spider\nB. a dog\nC. a fox",
    "What does water do at 100 degrees?\nA. it boils\nB. it freezes",
]
FREE = ["What is the capital of France?", "How many legs does a spider have?", "Two plus two?"]


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    from fslm.engine import load_engine

    return load_engine(str(build_tiny_model(tmp_path_factory.mktemp("tiny-big"), seed=7)))


@pytest.fixture()
def big(big_model):
    return Counting(big_model, model_ref="big")


def escalating(threshold, **escalate):
    return {
        "name": "escalating",
        "base_model": "tiny",
        "stages": [
            {"name": "pick", "instruction": "Answer.", "score": {}, "when": "has_options"},
            {"name": "free", "instruction": "Answer.", "when": "no_options", "generation": {"max_new_tokens": 5}},
            {
                "name": "big",
                "model": "big",
                "instruction": "Answer.",
                "escalate": {"confidence_of": "pick", "threshold": threshold, **escalate},
                "final": True,
            },
        ],
        "description": "free is final too",
    }


def with_free_final(data):
    data["stages"][1]["final"] = True
    return data


def margins(tiny_engine):
    cfg = parse_stack_config(
        {"name": "p", "base_model": "tiny", "stages": [{"name": "pick", "instruction": "Answer.", "score": {}}]}
    )
    return [r.trace[0].confidence for r in Stack(cfg, tiny_engine).run_batch(MC)]


def test_the_choice_margin_is_the_cascade_signal():
    from fslm.collaborate.runs import choice_margin as cascade_margin

    for scores in ([-1.0, -2.0], [-3.0, -0.5, -0.7], [-5.0, -5.0], [0.0]):
        assert choice_margin(scores) == pytest.approx(cascade_margin(scores))


def test_escalate_runs_the_larger_model_exactly_below_the_threshold(tiny_engine, big):
    values = margins(tiny_engine)
    ranked = sorted(set(values))
    assert len(ranked) >= 3, values  # the tiny model gives different margins: the test can split them
    threshold = (ranked[1] + ranked[2]) / 2
    below = [v < threshold for v in values]
    assert 0 < sum(below) < len(MC)
    stack = Stack(parse_stack_config(with_free_final(escalating(threshold))), tiny_engine, engines={"big": big})
    results = stack.run_batch(MC)
    assert big.calls == [("score", sum(len(c.split("\n")) for c, b in zip(_options(MC), below) if b), None)]
    for result, value, low in zip(results, values, below, strict=True):
        pick, free, esc = result.trace
        assert result.answer_stage == "big" and result.answer == esc.output and esc.kind == "escalate"
        assert esc.escalated is low and esc.confidence == pytest.approx(value) == pick.confidence
        assert f"threshold {threshold:g}" in esc.decision and f"{value:.4f}" in esc.decision
        if low:  # the larger model scored the same options from its own input
            direct = big.score([esc.input] * len(pick.options), list(pick.options))
            assert esc.option_scores == pytest.approx(tuple(s.logprob for s in direct), abs=1e-4)
            assert esc.model == "big" and esc.tokens_in > 0 and esc.decision.startswith("escalated")
        else:  # the small answer is kept, at no cost
            assert (esc.output, esc.option_scores, esc.model) == (pick.output, pick.option_scores, None)
            assert (esc.tokens_in, esc.tokens_out, esc.seconds) == (0, 0, 0.0)
            assert esc.decision.startswith("kept 'pick'")
    one_by_one = [stack.run(p) for p in MC]
    strip = lambda r: [{k: v for k, v in d.items() if k != "seconds"} for d in r.to_dict()["trace"]]  # noqa: E731
    # Equal up to float rounding: a batch scores items in packed rows of other widths than one item alone.
    assert _close([strip(r) for r in results], [strip(r) for r in one_by_one])


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def _options(prompts):
    return ["\n".join(line for line in p.split("\n") if line[:2] in ("A.", "B.", "C.", "D.")) for p in prompts]


def test_escalate_generates_when_the_small_answer_generates(tiny_engine, big):
    data = {
        "name": "g",
        "base_model": "tiny",
        "stages": [
            {"name": "answer", "instruction": "Answer.", "generation": {"max_new_tokens": 5}},
            {"name": "check", "sees": ["prompt", "answer"], "verify": {}},
            {
                "name": "big",
                "model": "big",
                "instruction": "Answer well.",
                "generation": {"max_new_tokens": 6},
                "escalate": {"confidence_of": "check", "threshold": 1.0},
            },
        ],
    }
    cfg = parse_stack_config(data)
    assert cfg.stage("big").escalate.answer == "answer"  # the verify stage's candidate
    stack = Stack(cfg, tiny_engine, engines={"big": big})
    results = stack.run_batch(FREE)
    assert big.calls == [("generate", 3, None)]  # P(yes) < 1 always: every prompt escalates, in one call
    from fslm.stack import generation_params

    for result in results:
        esc = result.trace[-1]
        assert esc.escalated and result.answer == esc.output
        assert esc.output == big.generate([esc.input], generation_params(cfg.stage("big")))[0].text


def test_escalate_to_a_stack_file(tmp_path, tiny_engine, big):
    import yaml

    larger = {
        "name": "larger",
        "base_model": "big",
        "stages": [{"name": "pick", "instruction": "Answer.", "score": {"format": "raw"}}],
    }
    (tmp_path / "larger.yaml").write_text(yaml.safe_dump(larger))
    data = escalating(1.0, stack="larger.yaml")
    del data["stages"][2]["model"]
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(with_free_final(data)))
    stack = Stack(load_stack_config(tmp_path / "small.yaml"), tiny_engine, engines={"big": big})
    assert stack.escalations["big"].stack.engine is big  # the larger stack shares the loaded model
    results = stack.run_batch(MC[:3])
    alone = Stack(parse_stack_config(larger), big).run_batch(MC[:3])
    for result, ref in zip(results, alone, strict=True):
        esc = result.trace[-1]
        assert esc.escalated and esc.output == ref.answer and result.answer == ref.answer
        assert esc.option_scores == pytest.approx(ref.trace[0].option_scores) and esc.score_format == "raw"
        assert [r["stage"] for r in esc.sub_trace] == ["pick"] and esc.tokens_in == ref.trace[0].tokens_in


def test_a_missing_or_cyclic_escalation_stack_is_a_config_error(tmp_path, tiny_engine):
    import yaml

    from fslm.stack_checks import validate_stack

    data = escalating(0.5, stack="nope.yaml")
    del data["stages"][2]["model"]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(with_free_final(data)))
    with pytest.raises(ConfigError, match=r"stages\.2\.escalate\.stack: no stack file at .*nope\.yaml"):
        validate_stack(tmp_path / "s.yaml")
    data["stages"][2]["escalate"]["stack"] = "s.yaml"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="cycle of stack files"):
        Stack.load(tmp_path / "s.yaml", engine=tiny_engine)


def test_a_calibrated_threshold_is_read_from_fslm_cascade_calibrate(tmp_path, tiny_engine, big):
    import yaml

    from fslm.collaborate.cascade import Calibration

    values = margins(tiny_engine)
    assert any(v < 0.99 for v in values) and any(v >= 0.99 for v in values)  # the threshold splits the items
    Calibration("margin", 0.99, 0.95, 0.5, 0.7, 0.68, 0.4, 0.3, 50, True).save(tmp_path / "cal.json")
    data = with_free_final(escalating(None, calibration="cal.json"))
    del data["stages"][2]["escalate"]["threshold"]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    stack = Stack(load_stack_config(tmp_path / "s.yaml"), tiny_engine, engines={"big": big})
    assert stack.escalations["big"].threshold == 0.99
    assert [r.trace[-1].escalated for r in stack.run_batch(MC)] == [v < 0.99 for v in values]
    Calibration("verify", 0.5, 0.95, 0.5, 0.7, 0.68, 0.4, 0.3, 50, True).save(tmp_path / "cal.json")
    with pytest.raises(ConfigError, match=r"escalate\.calibration: calibrated on the 'verify' signal.*--signal margin"):
        Stack(load_stack_config(tmp_path / "s.yaml"), tiny_engine, engines={"big": big})


VERIFY = {
    "name": "v",
    "base_model": "tiny",
    "stages": [
        {"name": "answer", "instruction": "Answer.", "generation": {"max_new_tokens": 5}, "final": True},
        {"name": "check", "sees": ["prompt", "answer"], "verify": {}},
    ],
}


def test_verify_is_p_yes_from_engine_score(tiny_engine):
    from fslm.collaborate.live import VERIFY_TEMPLATE, verify

    assert VERIFY_TEMPLATE == VERIFY_QUESTION + "\nAnswer:"  # so `fslm cascade signals` calibrates this stage
    stack = Stack(parse_stack_config(VERIFY), tiny_engine)
    prompts = [*FREE, MC[0]]
    results = stack.run_batch(prompts)
    for prompt, result in zip(prompts, results, strict=True):
        answer, check = result.trace
        question = prompt.split("\n\nOptions:")[0]  # the option block is not part of the question
        context = VERIFY_QUESTION.format(question=question, answer=answer.output) + "\nAnswer:"
        assert check.input == context and check.kind == "verify" and result.answer == answer.output
        yes, no = tiny_engine.score([context, context], [" yes", " no"])
        p = 1 / (1 + math.exp(no.logprob - yes.logprob))
        assert 0.0 <= check.confidence <= 1.0 and check.confidence == pytest.approx(p, abs=1e-6)
        assert check.output == f"{p:.4f}" and check.option_scores == pytest.approx((yes.logprob, no.logprob))
        assert check.confidence == pytest.approx(verify(tiny_engine, [question], [answer.output])[0][0], abs=1e-6)
        assert check.tokens_in == tiny_engine.count_tokens(context) + yes.n_tokens + no.n_tokens
    hot = copy.deepcopy(VERIFY)
    hot["stages"][1]["verify"] = {"temperature": 4.0, "format": "chat", "yes": "Yes", "no": "No"}
    hot["stages"][1]["instruction"] = "Judge the answer."
    check = Stack(parse_stack_config(hot), tiny_engine).run(FREE[0]).trace[1]
    yes, no = tiny_engine.score([check.input] * 2, ["Yes", "No"])
    assert check.input.startswith("<|im_start|>system\nJudge the answer.")
    assert check.confidence == pytest.approx(1 / (1 + math.exp((no.logprob - yes.logprob) / 4.0)), abs=1e-6)


def test_verify_with_an_adapter_scores_under_it(tiny_model_dir, tiny_adapters):
    from fslm.engine import load_engine

    data = copy.deepcopy(VERIFY)
    data["stages"][1]["adapter"] = str(tiny_adapters["answer"])
    engine = load_engine(str(tiny_model_dir))
    check = Stack(parse_stack_config(data), engine).run(FREE[0]).trace[1]
    yes, no = engine.score([check.input] * 2, [" yes", " no"], adapter="check")
    assert check.adapter == "check" and check.option_scores == pytest.approx((yes.logprob, no.logprob), abs=1e-4)


def test_a_confidence_condition_runs_a_stage_exactly_below_it(tiny_engine):
    stack = Stack(parse_stack_config(VERIFY), tiny_engine)
    values = [r.trace[1].confidence for r in stack.run_batch(FREE)]
    cut = sorted(values)[1]  # below: the lowest one only
    data = copy.deepcopy(VERIFY)
    data["stages"].append(
        {
            "name": "retry",
            "instruction": "Answer again.",
            "when": {"confidence_of": "check", "below": cut},
            "generation": {"max_new_tokens": 4},
            "final": True,
        }
    )
    data["stages"].append(
        {"name": "note", "instruction": "Note.", "when": {"confidence_of": "check", "above": cut}, "final": False}
    )
    engine = Counting(tiny_engine)
    results = Stack(parse_stack_config(data), engine).run_batch(FREE)
    for result, value in zip(results, values, strict=True):
        retry, note = result.trace[2], result.trace[3]
        if value < cut:
            assert retry.skipped is None and retry.when == f"confidence of 'check' {value:.4f} < {cut}"
            assert note.skipped == f"when: confidence of 'check' >= {cut}, and it is {value:.4f}"
            assert result.answer_stage == "retry"
        else:
            assert retry.skipped == f"when: confidence of 'check' < {cut}, and it is {value:.4f}"
            assert note.skipped is None and result.answer_stage == "answer"  # the last final stage that ran
    assert ("mixed", 3, None) in engine.calls  # retry (1 prompt) and note (2) decode in one batch


def test_eval_reads_the_escalated_scores(tiny_engine, big):
    from fslm.evaluate import StackSystem
    from fslm.evaluate.prompts import item_choices, stack_prompt
    from fslm.tasks import Item

    items = [
        Item(
            id=f"t/{i}",
            task="arc_easy",
            question=p.split("\n")[0],
            context=f"Question: {p.split(chr(10))[0]}\nAnswer:",
            choices=tuple(line[3:] for line in p.split("\n") if line[:2] in ("A.", "B.", "C.", "D.")),
            continuations=tuple(" " + line[3:] for line in p.split("\n") if line[:2] in ("A.", "B.", "C.", "D.")),
            gold=0,
        )
        for i, p in enumerate(MC)
    ]
    threshold = sorted(set(margins(tiny_engine)))[2]
    stack = Stack(parse_stack_config(with_free_final(escalating(threshold))), tiny_engine, engines={"big": big})
    system = StackSystem(stack)
    outcomes = system.answer_choices(items, {})
    results = stack.run_batch([stack_prompt(it) for it in items], choices=[item_choices(it) for it in items])
    assert any(r.trace[-1].escalated for r in results) and not all(r.trace[-1].escalated for r in results)
    for outcome, result in zip(outcomes, results, strict=True):
        assert outcome.choice_scores == pytest.approx(list(result.trace[-1].option_scores), abs=1e-4)
