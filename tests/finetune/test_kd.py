"""Distillation (`fslm finetune --kd`): the token-level loss is the documented mix, training moves the student toward
the teacher, other tokenizers are refused there, and choice-level KD works across tokenizers through option scores."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_model  # tests/conftest.py (tests/ is on sys.path under pytest)
from typer.testing import CliRunner

from fslm.cli import app
from fslm.config import load_stack_config
from fslm.errors import ConfigError
from fslm.finetune import TrainOptions, finetune_choice_kd, finetune_pairs, pair_examples
from fslm.finetune.choice_kd import SCORES_FILE, ChoiceExample, choice_kd_loss, option_loglikelihoods, teacher_scores
from fslm.finetune.examples import Example
from fslm.finetune.kd import Teacher, token_kd_loss
from fslm.finetune.pairs import build_choice_rows, pick_questions
from fslm.settings import get_settings
from fslm.tasks import Item, load_task
from fslm.tasks.splits import heldout_items

from .test_pairs import pair_rows, write_rows

FAST = dict(epochs=6, batch_size=4, lr=3e-3, rank=8, alpha=16, save_every=10, threads=1, precision="fp32")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """Same tokenizer as `tiny_model_dir` (same BPE training), other weights."""
    return build_tiny_model(tmp_path_factory.mktemp("kd-teacher"), seed=1)


@pytest.fixture(scope="module")
def other_tok_dir(tmp_path_factory):
    """Another vocabulary: refused for token-level KD, fine for choice-level KD."""
    return build_tiny_model(tmp_path_factory.mktemp("kd-other-tok"), seed=2, vocab_size=300)


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    from fslm.engine import load_engine

    return load_engine(str(teacher_dir))


def _lora(engine):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(engine.base_model, config)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(kd="m", kd_temperature=0.0), "--kd-temperature must be > 0"),
        (dict(kd="m", kd_temperature=float("nan")), "--kd-temperature must be > 0"),
        (dict(kd="m", kd_mix=1.5), "--kd-mix must be between 0 and 1"),
        (dict(kd="m", kd_level="sequence"), "--kd-level 'sequence'"),
        (dict(kd_adapter="a"), "needs a teacher"),
    ],
)
def test_options_validate_the_kd_settings(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainOptions(**options).validate()


def test_without_a_teacher_the_checkpoint_fingerprint_is_unchanged():
    plain = TrainOptions().math_fingerprint()
    assert not any(key.startswith("kd") for key in plain)  # checkpoints made before KD existed still resume
    assert TrainOptions(kd="t", kd_mix=0.7).math_fingerprint()["kd_mix"] == 0.7


def test_kd_term_is_zero_when_the_student_is_the_teacher(fresh_engine, tiny_model_dir):
    from fslm.engine import load_engine

    same = Teacher(load_engine(str(tiny_model_dir)))
    batch = pair_examples("answer", fresh_engine, pair_rows(4), 512).examples
    peft_model = _lora(fresh_engine)  # LoRA starts at zero: the student computes exactly the teacher's function
    try:
        loss, _, targets, parts = token_kd_loss(peft_model, same, batch, 0, TrainOptions(kd="t", kd_mix=1.0), False)
    finally:
        peft_model.unload()
    assert targets > 0 and parts["hard"] > 1.0  # the data is not learned...
    assert abs(float(loss.detach())) < 1e-5 and abs(parts["kd"]) < 1e-5  # ...but the student already is the teacher


@pytest.mark.parametrize("shortcut", [True, False])
def test_token_kd_loss_matches_a_hand_computation(fresh_engine, teacher, shortcut):
    batch = pair_examples("answer", fresh_engine, pair_rows(3), 512).examples
    pad = fresh_engine.tokenizer.pad_token_id
    options = TrainOptions(kd="t", kd_mix=0.3, kd_temperature=2.0, target_logits_only=shortcut)
    peft_model = _lora(fresh_engine)
    try:
        peft_model.eval()
        loss, _, _, parts = token_kd_loss(peft_model, Teacher(teacher), batch, pad, options, False)
        # by hand: each example alone, full logits, the formula of docs/distill.md written out term by term
        kls, ces = [], []
        with torch.no_grad():
            for ex in batch:
                ids = torch.tensor([list(ex.prompt_ids) + list(ex.target_ids)])
                s_all = peft_model(input_ids=ids).logits[0]
                t_all = teacher.base_model(input_ids=ids).logits[0]
                for k, token in enumerate(ex.target_ids):
                    pos = len(ex.prompt_ids) - 1 + k
                    p = torch.softmax(t_all[pos] / 2.0, -1)
                    q = torch.softmax(s_all[pos] / 2.0, -1)
                    kls.append(float((p * (p.log() - q.log())).sum()))
                    ces.append(-float(torch.log_softmax(s_all[pos], -1)[token]))
    finally:
        peft_model.unload()
    kd = 4.0 * sum(kls) / len(kls)
    hard = sum(ces) / len(ces)
    assert parts["kd"] == pytest.approx(kd, rel=1e-4) and parts["hard"] == pytest.approx(hard, rel=1e-4)
    assert float(loss) == pytest.approx(0.3 * kd + 0.7 * hard, rel=1e-4)


def _mean_kd(engine, teacher, examples, adapter) -> float:
    options = TrainOptions(kd="t", kd_mix=1.0)
    pad = engine.tokenizer.pad_token_id
    with torch.no_grad(), engine.hf_model(adapter) as model:
        return float(token_kd_loss(model, Teacher(teacher), examples, pad, options, False)[0])


def test_training_with_mix_1_moves_the_student_toward_the_teacher(tmp_path, stack_file, fresh_engine, teacher):
    rows = pair_rows(12)
    write_rows(tmp_path / "pairs.jsonl", rows)
    options = TrainOptions(**FAST, kd="teacher", kd_mix=1.0, kd_temperature=2.0)
    out = tmp_path / "out"
    report = finetune_pairs(
        stack_file, "answer", tmp_path / "pairs.jsonl", out, options, engine=fresh_engine, teacher=teacher
    )
    summary = report.stages["answer"]
    log = json.loads((out / "train_log.json").read_text())
    steps = log["stages"]["answer"]["steps"]
    assert all({"hard", "kd"} <= set(s) for s in steps)  # the two parts are logged apart
    assert all(s["loss"] == pytest.approx(s["kd"], abs=1e-4) for s in steps)  # mix 1: the loss is the KD term
    assert summary["final_kd"] < steps[0]["kd"]
    fresh_engine.add_adapter("answer", str(out / "adapters" / "answer"))
    examples = pair_examples("answer", fresh_engine, rows, 512).examples
    before, after = _mean_kd(fresh_engine, teacher, examples, None), _mean_kd(fresh_engine, teacher, examples, "answer")
    assert after < 0.7 * before, (before, after)
    # a rerun resumes (here: nothing left to do); other KD settings are refused, as other options always were
    again = finetune_pairs(
        stack_file, "answer", tmp_path / "pairs.jsonl", out, options, engine=fresh_engine, teacher=teacher
    )
    assert again.stages["answer"]["skipped"] == "already trained"
    with pytest.raises(ConfigError, match="other options or data"):
        other = TrainOptions(**FAST, kd="teacher", kd_mix=0.5)
        finetune_pairs(stack_file, "answer", tmp_path / "pairs.jsonl", out, other, engine=fresh_engine, teacher=teacher)


def test_a_teacher_with_another_tokenizer_is_refused_for_token_kd(tmp_path, stack_file, other_tok_dir):
    write_rows(tmp_path / "pairs.jsonl", pair_rows(4))
    args = [
        "finetune",
        "--stack",
        str(stack_file),
        "--pairs",
        "--stages",
        "answer",
        "--data",
        str(tmp_path / "pairs.jsonl"),
    ]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o"), "--kd", str(other_tok_dir)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "error:" in result.output and "tokenizer differs" in result.output and "--kd-level choice" in result.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--kd", "{teacher}", "--kd-temperature", "0"], "--kd-temperature must be > 0"),
        (["--kd", "{teacher}", "--kd-mix", "-0.1"], "--kd-mix must be between 0 and 1"),
        (["--kd", "{teacher}", "--kd-level", "word"], "--kd-level 'word'"),
        (["--kd-adapter", "{teacher}"], "needs a teacher"),
        (["--kd", "{teacher}", "--kd-adapter", "{missing}"], "not a folder"),
        (["--kd", "{missing}"], "--kd"),
        (["--tasks", "arc_challenge"], "--tasks is read by --kd-level choice only"),
        (["--kd", "{teacher}", "--kd-level", "choice", "--stages", "answer"], "--kd-level choice needs --tasks"),
        (["--kd", "{teacher}", "--kd-level", "choice", "--tasks", "arc_challenge"], "trains one stage"),
        (["--kd", "{teacher}", "--kd-level", "choice", "--tasks", "nope", "--stages", "answer"], "nope"),
    ],
)
def test_cli_bad_kd_input_exits_2(tmp_path, stack_file, teacher_dir, extra, message):
    extra = [e.format(teacher=teacher_dir, missing=tmp_path / "missing") for e in extra]
    args = ["finetune", "--stack", str(stack_file), "--out", str(tmp_path / "o"), *extra]
    if "choice" not in extra:
        (tmp_path / "d.jsonl").write_text("{}\n")
        args += ["--data", str(tmp_path / "d.jsonl")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "error:" in result.output and message in result.output, result.output
    assert not (tmp_path / "o").exists()  # refused before anything was loaded or written


def choice_items(n: int) -> list[Item]:
    """Questions with 3 options each: which word names digit a?"""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    items = []
    for i in range(n):
        a = i % 10
        options = (words[a], words[(a + 3) % 10], words[(a + 7) % 10])
        items.append(
            Item(
                id=f"toy/train/{i}",
                task="toy",
                question=f"Digit {a} in words?",
                choices=options,
                gold=0,
                context=f"Question: Which word is the digit {a}?\nAnswer:",
                continuations=tuple(" " + o for o in options),
            )
        )
    return items


def _option_kl(engine, rows, teacher_lp, adapter) -> float:
    """Mean KL(teacher || student) over questions of the option distributions (temperature 1)."""
    total = 0.0
    for row in rows:
        scores = engine.score(row["contexts"], row["continuations"], adapter=adapter)
        q = torch.log_softmax(torch.tensor([s.logprob for s in scores]), -1)
        p = torch.log_softmax(torch.tensor(teacher_lp[row["id"]]), -1)
        total += float((p.exp() * (p - q)).sum())
    return total / len(rows)


def test_choice_kd_moves_the_option_distribution_toward_a_teacher_of_another_vocabulary(
    tmp_path, stack_file, fresh_engine, other_tok_dir
):
    from fslm.engine import load_engine

    other = load_engine(str(other_tok_dir))
    items = choice_items(12)
    options = TrainOptions(
        **{**FAST, "epochs": 10}, kd=str(other_tok_dir), kd_level="choice", kd_mix=1.0, kd_temperature=1.0
    )
    out = tmp_path / "out"
    report = finetune_choice_kd(stack_file, "answer", out, options, items=items, engine=fresh_engine, teacher=other)
    cache = [json.loads(line) for line in (out / SCORES_FILE).read_text().splitlines()]
    assert [c["id"] for c in cache] == [i.id for i in items] and all(len(c["logprobs"]) == 3 for c in cache)
    teacher_lp = {c["id"]: c["logprobs"] for c in cache}
    assert report.stages["answer"]["final_kd"] >= 0
    rows = build_choice_rows(load_stack_config(stack_file), items)
    fresh_engine.add_adapter("answer", str(out / "adapters" / "answer"))
    before = _option_kl(fresh_engine, rows, teacher_lp, None)
    after = _option_kl(fresh_engine, rows, teacher_lp, "answer")
    assert after < 0.5 * before, (before, after)
    # the teacher's scores are the Engine protocol's `score`, summed over options exactly as evaluation sums them
    row = rows[0]
    assert teacher_lp[row["id"]] == pytest.approx(
        [s.logprob for s in other.score(row["contexts"], row["continuations"])]
    )


def test_teacher_scores_resume_after_a_torn_line(tmp_path, other_tok_dir, stack_file):
    from fslm.engine import load_engine

    teacher = Teacher(load_engine(str(other_tok_dir)))
    rows = build_choice_rows(load_stack_config(stack_file), choice_items(20))
    path = tmp_path / SCORES_FILE
    full = teacher_scores(teacher, rows, path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:5]) + lines[5][:20])  # a kill mid-append: five lines and a torn one
    calls = []
    original = teacher.engine.score
    teacher.engine.score = lambda c, k, adapter=None: calls.append(len(c)) or original(c, k, adapter=adapter)
    again = teacher_scores(teacher, rows, path)
    assert again.keys() == full.keys() and sum(calls) == 3 * 15  # only the 15 questions not on file were rescored
    assert all(again[k] == pytest.approx(full[k], abs=1e-3) for k in full)  # batch composition moves the last digits
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [r["id"] for r in rows]
    with pytest.raises(Exception, match="scored by"):
        teacher_scores(Teacher(teacher.engine, adapter="other"), rows, path)


def test_choice_loss_hard_part_is_the_gold_options_cross_entropy(fresh_engine):
    from fslm.finetune.choice_kd import choice_examples, choice_kd_loss

    items = choice_items(2)
    rows = [{"id": i.id, "gold": 0, "contexts": [i.context] * 3, "continuations": list(i.continuations)} for i in items]
    scores = {r["id"]: [-1.0, -2.0, -3.0] for r in rows}
    data = choice_examples("answer", fresh_engine, rows, scores, 512)
    pad = fresh_engine.tokenizer.pad_token_id
    peft_model = _lora(fresh_engine)
    try:
        peft_model.eval()
        options = TrainOptions(kd="t", kd_level="choice", kd_mix=0.25, kd_temperature=2.0)
        loss, _, _, parts = choice_kd_loss(peft_model, data.examples, pad, options, False)
    finally:
        peft_model.unload()
    hard, kd = [], []
    for row in rows:
        ll = torch.tensor([s.logprob for s in fresh_engine.score(row["contexts"], row["continuations"])])
        hard.append(-float(torch.log_softmax(ll, -1)[0]))
        p = torch.softmax(torch.tensor(scores[row["id"]]) / 2.0, -1)
        kd.append(4.0 * float(F.kl_div(torch.log_softmax(ll / 2.0, -1), p, reduction="sum")))
    assert parts["hard"] == pytest.approx(sum(hard) / 2, rel=1e-4) and parts["kd"] == pytest.approx(
        sum(kd) / 2, rel=1e-4
    )
    assert float(loss) == pytest.approx(0.25 * parts["kd"] + 0.75 * parts["hard"], rel=1e-5)


needs_data = pytest.mark.skipif(
    not (get_settings().data_dir / "arc_challenge").is_dir(), reason="shared benchmark data not found"
)


@needs_data
def test_choice_questions_come_from_train_dev_splits_never_an_evaluated_question():
    from fslm.retrieve.corpus import normalize_text

    items = pick_questions(30, ["arc_challenge", "openbookqa"], seed=0, dev_only=True)
    assert len(items) == 30
    for task in ("arc_challenge", "openbookqa"):
        evaluated = load_task(task)  # the whole evaluation split, not only its first items
        ids, questions = {i.id for i in evaluated}, {normalize_text(i.question) for i in evaluated}
        held = {i.id for i in heldout_items(task)[:100]}
        mine = [i for i in items if i.task == task]
        assert mine and not ({i.id for i in mine} & (ids | held))
        assert not {normalize_text(i.question) for i in mine} & questions
    with pytest.raises(ConfigError, match="arc_easy has no train/dev split"):
        pick_questions(4, ["arc_easy"], dev_only=True)


@needs_data
def test_cli_choice_kd_on_task_questions(tmp_path, stack_file, other_tok_dir):
    args = ["finetune", "--stack", str(stack_file), "--out", str(tmp_path / "o"), "--stages", "answer", "--json"]
    args += ["--kd", str(other_tok_dir), "--kd-level", "choice", "--tasks", "arc_challenge", "--kd-questions", "4"]
    result = CliRunner().invoke(app, [*args, "--epochs", "1", "--batch-size", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["records"] == 4 and report["stages"]["answer"]["steps"] == 2
    assert len((tmp_path / "o" / SCORES_FILE).read_text().splitlines()) == 4
    assert (tmp_path / "o" / "adapters" / "answer" / "adapter_model.safetensors").is_file()


def test_cli_kd_defaults_are_the_librarys():
    import inspect

    from fslm.cli.finetune import finetune_command

    got = {n: p.default.default for n, p in inspect.signature(finetune_command).parameters.items()}
    library = TrainOptions()
    assert (got["kd_temperature"], got["kd_mix"], got["kd_level"]) == (2.0, 0.5, "token")
    assert (got["kd_temperature"], got["kd_mix"], got["kd_level"]) == (
        library.kd_temperature,
        library.kd_mix,
        library.kd_level,
    )
    assert got["kd_questions"] == inspect.signature(finetune_choice_kd).parameters["questions"].default


def test_a_teacher_adapter_is_what_the_teacher_runs_with(fresh_engine, teacher_dir, tmp_path):
    from conftest import make_lora_adapter

    from fslm.finetune.kd import load_teacher

    adapter = make_lora_adapter(teacher_dir, tmp_path / "teacher-adapter")
    with_adapter = load_teacher(TrainOptions(kd=str(teacher_dir), kd_adapter=str(adapter)))
    plain = load_teacher(TrainOptions(kd=str(teacher_dir)))
    assert str(adapter) in with_adapter.id and with_adapter.id != plain.id  # score caches tell them apart
    batch = pair_examples("answer", fresh_engine, pair_rows(3), 512).examples
    options = TrainOptions(kd="t", kd_mix=1.0)
    peft_model = _lora(fresh_engine)
    try:
        peft_model.eval()
        kd = [token_kd_loss(peft_model, t, batch, 0, options, False)[3]["kd"] for t in (plain, with_adapter)]
    finally:
        peft_model.unload()
    assert abs(kd[0] - kd[1]) > 1e-3, kd


def test_choice_training_without_a_teacher_is_kd_mix_0_with_one(tmp_path, stack_file, fresh_engine, other_tok_dir):
    """The hard-label baseline trains on exactly what a teacher run trains on, minus the teacher's term."""
    from safetensors.torch import load_file

    from fslm.engine import load_engine

    items = choice_items(6)
    plain = TrainOptions(**FAST, kd_level="choice")
    report = finetune_choice_kd(stack_file, "answer", tmp_path / "plain", plain, items=items, engine=fresh_engine)
    assert "final_kd" not in report.stages["answer"] and report.stages["answer"]["final_hard"] > 0
    assert not (tmp_path / "plain" / SCORES_FILE).exists()  # no teacher was asked anything
    mixed = TrainOptions(**FAST, kd=str(other_tok_dir), kd_level="choice", kd_mix=0.0)
    other = load_engine(str(other_tok_dir))
    finetune_choice_kd(stack_file, "answer", tmp_path / "mixed", mixed, items=items, engine=fresh_engine, teacher=other)
    a, b = (load_file(tmp_path / d / "adapters" / "answer" / "adapter_model.safetensors") for d in ("plain", "mixed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_confidence_loss_moves_a_share_of_the_kd_term_to_the_students_own_answer(fresh_engine):
    """Burns et al.'s auxiliary loss: (1 - a) * KD + a * CE(student, its own argmax), inside the KD share."""
    engine = fresh_engine
    model = _lora(engine)
    ex = [
        ChoiceExample(
            "q",
            tuple(
                Example("q", tuple(engine.encode_pair("Pick:", c)[0]), tuple(engine.encode_pair("Pick:", c)[1]))
                for c in (" a", " b", " c")
            ),
            gold=2,
            teacher=(-1.0, -2.0, -0.5),
        )
    ]
    pad = engine.tokenizer.pad_token_id or 0
    plain = TrainOptions(kd="t", kd_level="choice", kd_mix=0.5, kd_temperature=1.0)
    conf = TrainOptions(kd="t", kd_level="choice", kd_mix=0.5, kd_temperature=1.0, kd_confidence=0.3)
    with torch.no_grad():
        loss0, _, _, parts0 = choice_kd_loss(model, ex, pad, plain, False)
        loss1, _, _, parts1 = choice_kd_loss(model, ex, pad, conf, False)
        student, _, _ = option_loglikelihoods(model, list(ex[0].options), pad, plain, False)
    own = -torch.log_softmax(student, -1).max()
    assert parts1["own"] == pytest.approx(float(own), rel=1e-5) and "own" not in parts0
    expected = 0.5 * (0.7 * parts0["kd"] + 0.3 * float(own)) + 0.5 * parts0["hard"]
    assert float(loss1) == pytest.approx(expected, rel=1e-5)
    assert float(loss0) == pytest.approx(0.5 * parts0["kd"] + 0.5 * parts0["hard"], rel=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(kd="t", kd_level="choice", kd_confidence=1.0), "--kd-confidence must be in"),
        (dict(kd="t", kd_confidence=0.2), "needs a teacher at --kd-level choice"),
        (dict(kd_level="choice", kd_confidence=0.2), "needs a teacher at --kd-level choice"),
    ],
)
def test_kd_confidence_is_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainOptions(**options).validate()
