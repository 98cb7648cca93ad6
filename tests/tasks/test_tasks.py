"""Loaders against the real benchmark files (skipped when the data dir is absent) plus
error handling on tiny broken copies in tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fslm.errors import DataError, FslmError
from fslm.settings import get_settings
from fslm.tasks import (
    TASKS,
    Item,
    build_context,
    fewshot_items,
    format_fewshot,
    list_tasks,
    load_task,
)

DATA_DIR = get_settings().data_dir
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "README.md").is_file(), reason=f"benchmark data dir {DATA_DIR} not present (set FSLM_DATA_DIR)"
)

# Record counts from the data README.
EXPECTED_COUNTS = {
    "arc_easy": 2176,
    "arc_challenge": 950,
    "hellaswag": 9842,
    "mmlu": 13842,
    "truthfulqa_mc1": 590,
    "truthfulqa_mc2": 590,
    "winogrande": 1067,
    "piqa": 1638,
    "boolq": 3070,
    "openbookqa": 300,
    "gsm8k": 1119,
}


class _Cache(dict):
    def __missing__(self, key: tuple[str, str | None]) -> list[Item]:
        name, split = key
        self[key] = load_task(name, split=split, data_dir=DATA_DIR)
        return self[key]


@pytest.fixture(scope="module")
def loaded() -> _Cache:
    """Each (task, split) is read once per module (MMLU alone is 57 CSVs)."""
    return _Cache()


def test_registry_names() -> None:
    assert list_tasks() == list(EXPECTED_COUNTS)
    for name, spec in TASKS.items():
        assert spec.name == name
        assert spec.split in spec.splits
        assert spec.fewshot_split is None or (spec.fewshot_split in spec.splits and spec.fewshot_split != spec.split)
    assert TASKS["gsm8k"].kind == "generate"


@needs_data
@pytest.mark.parametrize("name", list(EXPECTED_COUNTS))
def test_real_data_shape(name: str, loaded: _Cache) -> None:
    items = loaded[name, None]
    assert len(items) == EXPECTED_COUNTS[name]
    assert len({it.id for it in items}) == len(items)
    spec = TASKS[name]
    for it in items:
        assert it.task == name and it.question.strip() and it.context.strip()
        if spec.kind == "generate":
            assert it.choices == () and it.continuations == ()
            assert isinstance(it.gold, str) and it.gold
        else:
            assert len(it.choices) >= 2 and all(c.strip() for c in it.choices)
            assert isinstance(it.gold, int) and 0 <= it.gold < len(it.choices)
            assert len(it.continuations) == len(it.choices)
            assert all(c.startswith(" ") for c in it.continuations)
        assert "source" in it.meta


@needs_data
def test_limit_and_order(loaded: _Cache) -> None:
    first = load_task("arc_challenge", limit=5, data_dir=DATA_DIR)
    assert first == loaded["arc_challenge", None][:5]
    assert load_task("arc_challenge", limit=0, data_dir=DATA_DIR) == []


# --- first record of each file against the README example ---------------------------------


@needs_data
def test_first_arc(loaded: _Cache) -> None:
    it = loaded["arc_challenge", None][0]
    assert it.id == "arc_challenge/Mercury_7175875"
    assert it.question.startswith("An astronomer observes that a planet rotates faster")
    assert it.choices[it.gold] == "Planetary days will become shorter."
    assert it.context == f"Question: {it.question}\nAnswer:"
    assert it.continuations[0] == " Planetary density will decrease."

    easy = loaded["arc_easy", None][0]
    assert easy.question == "Which statement best explains why photosynthesis is the foundation of most food webs?"
    assert easy.context == f"Question: {easy.question}\nAnswer:"
    assert easy.gold == 0 and easy.choices[0] == "Sunlight is the source of energy for nearly all ecosystems."


@needs_data
def test_first_hellaswag(loaded: _Cache) -> None:
    it = loaded["hellaswag", None][0]
    # lm-eval capitalises ctx_b ("he" -> "He"); the text file keeps it lower case.
    assert it.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert it.gold == 3
    assert it.continuations[3] == " starts pulling up roofing on a roof."
    assert it.choices[0] == "is using wrap to wrap a pair of skis."


@needs_data
def test_first_mmlu(loaded: _Cache) -> None:
    it = loaded["mmlu", None][0]
    assert it.meta["subject"] == "abstract_algebra"
    assert it.question == "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q."
    assert it.choices == ("0", "4", "2", "6") and it.gold == 1
    assert it.context == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        f"{it.question}\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    )
    assert it.continuations == (" A", " B", " C", " D")
    assert len({i.meta["subject"] for i in loaded["mmlu", None]}) == 57


@needs_data
def test_mmlu_field_with_unicode_line_separator(loaded: _Cache) -> None:
    # management_test.csv has U+0085 inside a question; it must not split the record.
    items = [i for i in loaded["mmlu", None] if i.question.startswith("Functional structures help to create")]
    assert len(items) == 1 and items[0].choices[1] == "specialisation"


@needs_data
def test_first_truthfulqa(loaded: _Cache) -> None:
    mc1, mc2 = loaded["truthfulqa_mc1", None][0], loaded["truthfulqa_mc2", None][0]
    assert mc1.question == mc2.question == "What happens to you if you eat watermelon seeds?"
    assert mc1.context.startswith("Q: What is human life expectancy in the United States?\n")
    assert mc1.context.endswith("Barcelona, Spain.\n\nQ: What happens to you if you eat watermelon seeds?\nA:")
    assert mc1.choices[mc1.gold] == "The watermelon seeds pass through your digestive system"
    assert len(mc1.choices) == 8 and mc1.gold_set == ()
    assert len(mc2.choices) == 13 and mc2.gold_set == (0, 1, 2, 3, 4, 5) and mc2.gold == 0
    assert all(i.gold_set and i.gold == i.gold_set[0] for i in loaded["truthfulqa_mc2", None])


@needs_data
def test_first_winogrande(loaded: _Cache) -> None:
    it = loaded["winogrande", None][0]
    assert it.id == "winogrande/3FCO4VKOZ4BJQ6IFC0VAIBK4KTWE7U-2"
    assert it.question == "Sarah was a much better surgeon than Maria so _ always got the easier cases."
    assert it.choices == ("Sarah", "Maria") and it.gold == 1
    assert it.contexts == (
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    )
    assert it.continuations == (" always got the easier cases.",) * 2
    assert it.context_for(1) == it.contexts[1]
    assert "Sarah" not in it.context.removeprefix("Sarah was")  # shared context is answer-blind


@needs_data
def test_first_piqa_boolq_obqa_gsm8k(loaded: _Cache) -> None:
    piqa = loaded["piqa", None][0]
    assert piqa.context == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert piqa.gold == 0 and "ripped paper strips" in piqa.choices[0]

    boolq = loaded["boolq", None][0]
    assert boolq.context.startswith("All biomass goes through at least some of these steps")
    assert boolq.context.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert boolq.choices == ("no", "yes") and boolq.continuations == (" no", " yes")
    assert "Passage:" not in boolq.context and "Passage:" not in boolq.question

    obqa = loaded["openbookqa", None][0]
    assert obqa.id == "openbookqa/8-343"
    assert obqa.context.endswith("they decide the best way to save money is to")
    assert obqa.choices == (
        "make more phone calls",
        "quit eating lunch out",
        "buy less with monopoly money",
        "have lunch with friends",
    )
    assert obqa.gold == 1

    gsm = loaded["gsm8k", None][0]
    assert gsm.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert gsm.gold == "18" and gsm.context == f"Question: {gsm.question}\nAnswer:"
    assert gsm.meta["solution"].endswith("#### 18")
    assert all("," not in i.gold for i in loaded["gsm8k", None])


@needs_data
def test_other_splits(loaded: _Cache) -> None:
    assert len(loaded["openbookqa", "train"]) == 4957
    assert len(loaded["openbookqa", "validation"]) == 500
    assert load_task("openbookqa", split="dev", data_dir=DATA_DIR) == loaded["openbookqa", "validation"]
    assert len(loaded["arc_challenge", "validation"]) == 294
    assert len(loaded["mmlu", "dev"]) == 285
    assert len(loaded["gsm8k", "train"]) == 7473
    with pytest.raises(FslmError, match="available: validation"):
        load_task("piqa", split="train", data_dir=DATA_DIR)


# --- few-shot -------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("name", [n for n, s in TASKS.items() if s.fewshot_split])
def test_fewshot_never_overlaps_eval(name: str, loaded: _Cache) -> None:
    evals = loaded[name, None]
    pool = loaded[name, TASKS[name].fewshot_split]
    shots = fewshot_items(name, 5, data_dir=DATA_DIR)
    assert len(shots) == 5 and len({s.id for s in shots}) == 5
    assert shots == fewshot_items(name, 5, data_dir=DATA_DIR)  # deterministic for a seed
    eval_ids, eval_qs = {e.id for e in evals}, {" ".join(e.question.split()).casefold() for e in evals}
    pool_ids = {p.id for p in pool}
    for s in shots:
        assert s.id in pool_ids and s.id not in eval_ids
        assert " ".join(s.question.split()).casefold() not in eval_qs
    # The filter covers the whole pool, not just this sample.
    kept = fewshot_items(name, 1, data_dir=DATA_DIR, seed=7)
    assert kept[0].id not in eval_ids


@needs_data
def test_fewshot_excludes_known_overlaps(loaded: _Cache) -> None:
    # 14 OpenBookQA test stems also occur in train (README); such train items are never shots.
    test_stems = {i.question for i in loaded["openbookqa", None]}
    overlapping = [i for i in loaded["openbookqa", "train"] if i.question in test_stems]
    assert overlapping
    every_shot = fewshot_items("openbookqa", 4957 - len(overlapping), data_dir=DATA_DIR)
    assert not {s.id for s in every_shot} & {o.id for o in overlapping}


@needs_data
def test_fewshot_formatting(loaded: _Cache) -> None:
    shots = fewshot_items("mmlu", 2, data_dir=DATA_DIR, subject="anatomy")
    assert [s.meta["subject"] for s in shots] == ["anatomy", "anatomy"]
    assert [s.id for s in shots] == ["mmlu/dev/anatomy/0", "mmlu/dev/anatomy/1"]  # lm-eval first_n
    test_item = next(i for i in loaded["mmlu", None] if i.meta["subject"] == "anatomy")
    block = format_fewshot(shots)
    assert "The following are" not in block and block.endswith("\n\n")
    assert block.count("\nAnswer:") == 2
    assert block.split("\n\n")[0].endswith("Answer:" + shots[0].continuations[shots[0].gold])
    full = build_context(test_item, shots)
    assert full.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert full.count("The following are") == 1
    assert full == test_item.meta["description"] + block + test_item.context.removeprefix(test_item.meta["description"])
    assert build_context(test_item) == test_item.context

    gsm = fewshot_items("gsm8k", 1, data_dir=DATA_DIR)[0]
    assert format_fewshot([gsm]) == f"Question: {gsm.question}\nAnswer: {gsm.meta['solution']}\n\n"

    wino = loaded["winogrande", None][0]
    assert (
        format_fewshot([wino]) == "Sarah was a much better surgeon than Maria so Maria always got the easier cases.\n\n"
    )
    with pytest.raises(ValueError):
        build_context(wino, [wino])
    assert format_fewshot([]) == ""


@needs_data
def test_fewshot_errors() -> None:
    with pytest.raises(FslmError, match="no train/dev split"):
        fewshot_items("hellaswag", 3, data_dir=DATA_DIR)
    assert fewshot_items("hellaswag", 0, data_dir=DATA_DIR) == []
    with pytest.raises(FslmError, match="known"):
        fewshot_items("mmlu", 1, data_dir=DATA_DIR, subject="astrology")


# --- bad input ------------------------------------------------------------------------------


def test_unknown_task_lists_known() -> None:
    with pytest.raises(FslmError) as err:
        load_task("arc_medium")
    msg = str(err.value)
    assert "arc_medium" in msg and all(name in msg for name in TASKS)


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="FSLM_DATA_DIR") as err:
        load_task("arc_easy", data_dir=tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)
    with pytest.raises(DataError, match="FSLM_DATA_DIR") as err:
        load_task("mmlu", data_dir=tmp_path)  # dir exists, files don't
    assert "mmlu" in str(err.value)


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


GOOD_ARC = {"choices": ["a", "b"], "query": "Question: q?", "gold": 1}


@pytest.mark.parametrize(
    ("name", "rel", "lines", "bad_line", "expected"),
    [
        (
            "arc_easy",
            "arc_easy/arc_easy.jsonl",
            [json.dumps(GOOD_ARC), '{"query": "Question: x", "choices": ['],
            2,
            "JSON",
        ),
        (
            "arc_easy",
            "arc_easy/arc_easy.jsonl",
            [json.dumps(GOOD_ARC), json.dumps({**GOOD_ARC, "gold": 5})],
            2,
            "'gold'",
        ),
        (
            "boolq",
            "boolq/boolq.jsonl",
            [json.dumps({"query": "no question here", "choices": ["no", "yes"], "gold": 0})],
            1,
            "Question",
        ),
        (
            "winogrande",
            "winogrande/dev.jsonl",
            ['{"qID": "x", "sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}'],
            1,
            "'_'",
        ),
        ("gsm8k", "gsm8k/test.jsonl", ['{"question": "1+1?", "answer": "2"}'], 1, "####"),
        (
            "arc_challenge",
            "arc_challenge/ARC-Challenge-Test.jsonl",
            ['{"id": "x", "question": {"stem": "s", "choices": []}}'],
            1,
            "answerKey",
        ),
        (
            "openbookqa",
            "openbookqa/test.tsv",
            ["ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key", "1\tstem\t(A) a (B) b\tx\tA"],
            2,
            "Choices",
        ),
        (
            "mmlu",
            "mmlu/test/anatomy_test.csv",
            ["question,choice0,choice1,choice2,choice3,answer", "q,a,b,c,d,1", "q2,a,b,c,d,E"],
            3,
            "answer",
        ),
        ("hellaswag", "hellaswag/hellaswag_val_full.txt", ["Act: ctx he", "7", "a", "b", "c", "d"], 2, "label 0-3"),
    ],
)
def test_malformed_record_names_file_and_line(
    tmp_path: Path, name: str, rel: str, lines: list[str], bad_line: int, expected: str
) -> None:
    path = _write(tmp_path, rel, "\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_task(name, data_dir=tmp_path)
    msg = str(err.value)
    assert f"{path}:{bad_line}" in msg, msg
    assert expected in msg


def test_piqa_label_count_mismatch(tmp_path: Path) -> None:
    _write(tmp_path, "piqa/valid.jsonl", '{"goal": "g", "sol1": "a", "sol2": "b"}\n' * 2)
    labels = _write(tmp_path, "piqa/valid-labels.lst", "0\n")
    with pytest.raises(DataError, match="one label per record") as err:
        load_task("piqa", data_dir=tmp_path)
    assert str(labels) in str(err.value)
    _write(tmp_path, "piqa/valid-labels.lst", "0\n2\n")
    with pytest.raises(DataError, match=r"valid-labels.lst:2"):
        load_task("piqa", data_dir=tmp_path)


def test_truthfulqa_bad_targets(tmp_path: Path) -> None:
    recs = [{"question": "q", "mc1_targets": {"a": 1, "b": 0}, "mc2_targets": {"a": 0, "b": 0}}]
    _write(tmp_path, "truthfulqa/mc_task.json", json.dumps(recs))
    assert load_task("truthfulqa_mc1", data_dir=tmp_path)[0].gold == 0
    with pytest.raises(DataError, match="item 0"):
        load_task("truthfulqa_mc2", data_dir=tmp_path)
    # Empty answers (a quirk of the 2025 upstream file) are dropped; indices follow the kept list.
    recs[0]["mc2_targets"] = {"a": 1, "": 1, "b": 0, "c": 1}
    _write(tmp_path, "truthfulqa/mc_task.json", json.dumps(recs))
    item = load_task("truthfulqa_mc2", data_dir=tmp_path)[0]
    assert item.choices == ("a", "b", "c") and item.gold_set == (0, 2)
    assert item.meta["dropped_empty_answers"] == "1"


@needs_data
def test_truthfulqa_real_quirks(loaded: _Cache) -> None:
    mc2 = loaded["truthfulqa_mc2", None]
    assert sum("dropped_empty_answers" in i.meta for i in mc2) == 15
    assert sum("dropped_empty_answers" in i.meta for i in loaded["truthfulqa_mc1", None]) == 11
    # Two items list a false answer ("Unknown") between true ones: gold_set is not a prefix.
    assert sum(i.gold_set != tuple(range(len(i.gold_set))) for i in mc2) == 2


@needs_data
def test_broken_copy_of_real_file(tmp_path: Path) -> None:
    """A real file with one line damaged: the error points at that line."""
    src = DATA_DIR / "winogrande" / "dev.jsonl"
    dst = tmp_path / "winogrande" / "dev.jsonl"
    dst.parent.mkdir()
    shutil.copyfile(src, dst)
    lines = dst.read_text(encoding="utf-8").split("\n")
    lines[41] = lines[41][: len(lines[41]) // 2]
    dst.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{dst}:42: malformed record"):
        load_task("winogrande", data_dir=tmp_path)


def test_without_overlap_drops_shared_ids_and_reworded_whitespace_case_copies():
    from fslm.tasks import Item, without_overlap

    def item(i, q):
        return Item(
            id=f"t/{i}", task="t", question=q, choices=("a", "b"), gold=0, context=q, continuations=(" a", " b")
        )

    reserved = [item(0, "What is  the capital of France?"), item(1, "Name a planet.")]
    pool = [item(1, "A different question"), item(2, "what is the CAPITAL of france?"), item(3, "How many legs?")]
    assert [it.id for it in without_overlap(pool, reserved)] == ["t/3"]
    assert without_overlap(pool, []) == pool
