"""Quality filters and the crash-safe JSONL store."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fslm.distill import DistillStore, check_target, is_repetitive, leaks_answer, read_distilled
from fslm.errors import DataError


def test_filters_flag_each_problem():
    assert check_target("   ") == ["empty"]
    assert check_target("fine text") == []
    assert check_target("cut off", finish_reason="length") == ["too_long"]
    assert check_target("a b c d e", max_tokens=3, count_tokens=lambda t: len(t.split())) == ["too_long"]
    assert check_target("one\n\ntwo", stop=["\n\n"]) == ["stop_string"]
    assert check_target("The key facts are:") == ["incomplete"]
    loop = "I like the sea. " + "the sea is blue and " * 6
    assert is_repetitive(loop) and "repetitive" in check_target(loop)
    assert not is_repetitive("The user wants to know how photosynthesis turns light into chemical energy in plants.")
    assert is_repetitive("Paris is nice.\nParis is nice.\nParis is nice.\nok")


def test_answer_leak_needs_a_verbatim_run_of_the_gold():
    gold = "The top 5 most populous states are California, Texas, Florida, New York and Illinois."
    assert leaks_answer(gold, "The user wants the top 5 most populous states are California, Texas, Florida listed")
    assert not leaks_answer(gold, "The user wants to know which US states have the most people.")
    assert not leaks_answer("Paris", "Facts: France, capital, Paris")  # one-word golds are also key terms
    assert leaks_answer("speak, pending, threat", "verbs: Speak, pending, threat!")
    assert check_target("so: speak pending threat", answer="speak, pending, threat") == ["answer_leak"]
    assert check_target("so: speak pending threat", answer=None) == []


def test_answer_leak_ignores_runs_the_prompt_already_contains():
    # Realistic cases from a 200-record SmolLM2 distill run: golds restate the question, so does the intent stage.
    prompt = "Explain why some countries have a high rate of unemployment"
    gold = "Some countries have a high rate of unemployment due to a lack of economic investments and growth."
    restated = "The user wants to know why some countries have a high rate of unemployment."
    assert leaks_answer(gold, restated) and not leaks_answer(gold, restated, prompt)
    assert leaks_answer(gold, "Unemployment is high due to a lack of economic investments and growth.", prompt)
    # the whole answer copied into the facts stage stays a leak, question words or not
    prompt = "Name a popular dish from Japan"
    assert leaks_answer("Sushi is a popular dish from Japan.", "Sushi is a popular dish from Japan.", prompt)
    prompt = "List the seven colours of the rainbow."
    gold = "The seven colours of the rainbow are red, orange, yellow, green, blue, indigo, and violet."
    assert leaks_answer(gold, "The answer is: the seven colours of the rainbow are red, orange, yellow, green.", prompt)
    assert not leaks_answer(gold, "The user wants to know the seven colours of the rainbow.", prompt)
    assert check_target(restated, answer=gold, prompt="Why do some countries have a high rate of unemployment?") == []


def _rec(i: int) -> dict:
    return {"id": f"r{i}", "targets": {"answer": f"text {i}"}, "kept": True}


def test_store_appends_once_and_repairs_a_partial_last_line(tmp_path):
    path = tmp_path / "d.jsonl"
    with DistillStore(path) as store:
        assert store.append([_rec(0), _rec(1)]) == 2
        assert store.append([_rec(1), _rec(2)]) == 1  # r1 is already on disk
    with path.open("ab") as fh:
        fh.write(b'{"id": "r3", "targ')  # what a kill in the middle of a write leaves behind
    with DistillStore(path) as store:
        assert store.done == {"r0", "r1", "r2"} and store.repaired_bytes == len(b'{"id": "r3", "targ')
        store.append([_rec(3)])
    lines = path.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["r0", "r1", "r2", "r3"]
    assert [r["_line"] for r in read_distilled(path)] == [1, 2, 3, 4]


def test_store_refuses_a_corrupt_middle_line_and_a_second_writer(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_rec(0)) + "\nnot json\n" + json.dumps(_rec(1)) + "\n")
    with pytest.raises(DataError, match="line 2: corrupt distilled record"):
        DistillStore(path).__enter__()
    ok = tmp_path / "ok.jsonl"
    with DistillStore(ok):
        with pytest.raises(DataError, match="another `fslm distill` is writing"):
            DistillStore(ok).__enter__()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), max_size=6), max_size=6), st.integers(0, 40))
def test_store_property_every_id_once_whatever_the_batches_and_cut(tmp_path_factory, batches, cut):
    """Any batch sequence, then the file cut at any byte: reopening keeps exactly the complete, unique records."""
    path = tmp_path_factory.mktemp("p") / "d.jsonl"
    with DistillStore(path) as store:
        for batch in batches:
            store.append([_rec(i) for i in batch])
    data = path.read_bytes()
    path.write_bytes(data[: max(0, len(data) - cut)])
    with DistillStore(path) as store:
        ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
        assert len(ids) == len(set(ids)) == len(store.done) and set(ids) == store.done
