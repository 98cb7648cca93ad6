"""Benchmark task files (JSONL, CSV, TSV, the HellaSwag text layout, the TruthfulQA JSON list) under fuzzing: every
loader returns items or raises one DataError naming the file, in time linear in the file."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from fuzzing import FUZZ, NASTY, broken, dumps_line, json_ish, loads_or_fails_cleanly, mutated
from hypothesis import given
from hypothesis import strategies as st

from fslm.errors import DataError
from fslm.tasks import load_task
from fslm.tasks.text_tasks import hellaswag_preprocess, split_obqa_choices

ARC = {
    "id": "Q1",
    "question": {"stem": "Which is wet?", "choices": [{"text": "water", "label": "A"}, {"text": "sand", "label": "B"}]},
    "answerKey": "A",
}
SEEDS: dict[str, dict[str, bytes]] = {
    "arc_challenge": {"arc_challenge/ARC-Challenge-Test.jsonl": dumps_line(ARC) * 2},
    "arc_easy": {
        "arc_easy/arc_easy.jsonl": dumps_line({"query": "Question: Wet?\nAnswer:", "choices": ["yes", "no"], "gold": 0})
    },
    "boolq": {
        "boolq/boolq.jsonl": dumps_line(
            {"query": "Passage: Rain is wet.\nQuestion: is rain wet?", "choices": ["no", "yes"], "gold": 1}
        )
    },
    "piqa": {
        "piqa/valid.jsonl": dumps_line({"goal": "open a jar", "sol1": "twist the lid", "sol2": "bite it"}),
        "piqa/valid-labels.lst": b"0\n",
    },
    "winogrande": {
        "winogrande/dev.jsonl": dumps_line(
            {"qID": "w1", "sentence": "Ann beat Bo so _ won.", "option1": "Ann", "option2": "Bo", "answer": "1"}
        )
    },
    "gsm8k": {"gsm8k/test.jsonl": dumps_line({"question": "1+1?", "answer": "1+1=2\n#### 2"})},
    "openbookqa": {
        "openbookqa/test.tsv": b"ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
        b"7-1\tGas is\t(A) hot (B) cold (C) wet (D) free\tGas is ...\tD\n"
    },
    "mmlu": {
        "mmlu/test/anatomy_test.csv": b"question,choice0,choice1,choice2,choice3,answer\n"
        b'"What, exactly?",a,b,c,"d\nd",2\n'
    },
    "hellaswag": {
        "hellaswag/hellaswag_val_full.txt": b"Roof: A man is on a roof. he\n3\nsits.\nfalls.\njumps [x] up.\nstands.\n"
    },
    "truthfulqa_mc2": {
        "truthfulqa/mc_task.json": json.dumps(
            [{"question": "Q?", "mc1_targets": {"a": 1, "b": 0}, "mc2_targets": {"a": 1, "b": 0, "c": 1}}]
        ).encode()
    },
}


def _load(root: Path, task: str, files: dict[str, bytes], fuzzed: str, content: bytes):
    for rel, seed in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if rel == fuzzed else seed)
    items = loads_or_fails_cleanly(lambda: load_task(task, data_dir=root), root, DataError)
    for item in items or []:  # what loads is text every scorer and prompt builder can encode
        "".join([item.question, item.context, *item.choices, *item.continuations, *item.contexts]).encode("utf-8")
    return items


@pytest.mark.parametrize("task", sorted(SEEDS))
def test_seed_files_load(tmp_path, task):
    files = SEEDS[task]
    assert _load(tmp_path, task, files, "", b"")


@pytest.mark.parametrize("task", sorted(SEEDS))
@FUZZ
@given(data=st.data())
def test_fuzzed_task_files(tmp_path, task, data):
    files = SEEDS[task]
    fuzzed = data.draw(st.sampled_from(sorted(files)))
    content = data.draw(mutated(files[fuzzed]) | st.binary(max_size=200) | st.sampled_from(NASTY) | json_ish)
    _load(tmp_path, task, files, fuzzed, content)


@pytest.mark.parametrize("task", ["arc_easy", "gsm8k", "winogrande", "boolq", "arc_challenge", "piqa"])
@FUZZ
@given(data=st.data())
def test_jsonl_records_one_mistake_away(tmp_path, task, data):
    files = SEEDS[task]
    rel = next(r for r in files if r.endswith(".jsonl"))
    seed = json.loads(files[rel].splitlines()[0])
    rows = data.draw(st.lists(broken(seed) | st.just(seed), min_size=1, max_size=3))
    _load(tmp_path, task, files | {rel: b""}, rel, b"".join(dumps_line(r) for r in rows))


@FUZZ
@given(broken(json.loads(SEEDS["truthfulqa_mc2"]["truthfulqa/mc_task.json"])))
def test_truthfulqa_one_mistake_away(tmp_path, records):
    (rel,) = SEEDS["truthfulqa_mc2"]
    content = json.dumps(records).encode("utf-8", "backslashreplace")
    for task in ("truthfulqa_mc1", "truthfulqa_mc2"):
        _load(tmp_path, task, SEEDS["truthfulqa_mc2"], rel, content)


OLD_OBQA = re.compile(r"\(A\) (.*?) \(B\) (.*?) \(C\) (.*?) \(D\) (.*)", re.S)


@FUZZ
@given(st.lists(st.sampled_from(["(A) ", " (B) ", " (C) ", " (D) ", "(B)", " ", "x", "\n", "(A)"]), max_size=14))
def test_obqa_split_equals_the_old_regex(pieces):
    text = "".join(pieces)
    old = OLD_OBQA.fullmatch(text)
    assert split_obqa_choices(text) == (old.groups() if old else None)


OLD_BRACKETS = re.compile(r"\[.*?\]")


@FUZZ
@given(st.text(st.sampled_from("[] x\n."), max_size=30))
def test_bracket_removal_equals_the_old_regex(text):
    old = OLD_BRACKETS.sub("", text.strip().replace(" [title]", ". ")).replace("  ", " ")
    assert hellaswag_preprocess(text) == old


def test_pathological_lines_take_linear_time():
    started = time.monotonic()
    assert split_obqa_choices("(A) x" + " (B) x (C) x" * 100_000) is None  # old regex: 14 s at 1k repeats
    hellaswag_preprocess("[" * 1_000_000)  # old regex: 4.6 s at 40k
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "task, rel, content",
    [
        ("piqa", "piqa/valid-labels.lst", b"0\x1c\n"),
        ("hellaswag", "hellaswag/hellaswag_val_full.txt", b"Roof: A man. he\n3\x1f\na\nb\nc\nd\n"),
    ],
)
def test_labels_with_separator_characters(tmp_path, task, rel, content):
    """str.strip() removes \\x1c-\\x1f, int() does not: a label the check accepted crashed the conversion."""
    items = _load(tmp_path, task, SEEDS[task], rel, content)
    assert items is not None and items[0].gold in (0, 3)
