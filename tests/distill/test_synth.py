"""`fslm synth` (self-instruct) against a real local HTTP teacher: ROUGE-L dedup, filters, seeded determinism, and a
run interrupted mid-way then resumed writes the same file as one uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from live_server import running_server

from fslm.distill.synth import (
    SeedTask,
    SynthOptions,
    _Round,
    instruction_problem,
    load_seed_tasks,
    parse_instance,
    parse_instructions,
    synth,
)
from fslm.errors import DataError
from fslm.evaluate.metrics import rouge_l
from fslm.teachers import HTTPTeacher, LocalTeacher, TeacherReply

from .conftest import read_lines
from .fake_teacher import SelfInstructTeacher

SEEDS = [
    ("Give three tips for staying healthy.", "", "Eat well, sleep enough and exercise."),
    ("What is the relation between the given pairs?", "Night : Day :: Right : Left", "They are opposites."),
    ("Translate the sentence into French.", "I like cheese.", "J'aime le fromage."),
    ("Suggest a name for a new coffee shop.", "", "Bean There."),
    ("Sort the numbers in increasing order.", "5, 2, 9", "2, 5, 9"),
    ("Write a short poem about the sea.", "", "Waves fold in silver light."),
    ("Find the capital of the given country.", "Japan", "Tokyo"),
    ("Convert the temperature from Celsius to Fahrenheit.", "100 C", "212 F"),
]


def write_seeds(path: Path, seeds=SEEDS) -> Path:
    rows = [
        {"id": f"seed_task_{i}", "name": f"t{i}", "instruction": ins, "instances": [{"input": inp, "output": out}]}
        for i, (ins, inp, out) in enumerate(seeds)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def seeds_file(tmp_path) -> Path:
    return write_seeds(tmp_path / "seed_tasks.jsonl")


@pytest.fixture(scope="module")
def teacher_url():
    server = SelfInstructTeacher()
    with running_server(server.app, path="/v1") as url:
        yield url


def http(url: str) -> HTTPTeacher:
    return HTTPTeacher(url, "synth-teacher", concurrency=4, timeout=10)


def test_output_is_alpaca_and_every_instruction_is_novel(teacher_url, seeds_file, tmp_path):
    out = tmp_path / "synth.jsonl"
    report = synth(out, teacher=http(teacher_url), seeds=seeds_file, options=SynthOptions(n=20, seed=1))
    rows = read_lines(out)
    assert len(rows) == 20 == report.written and report.already_done == 0
    assert [r["id"] for r in rows] == [f"synth-{i:06d}" for i in range(20)]
    for r in rows:
        assert set(r) == {"id", "instruction", "input", "output", "round"}
        assert r["output"].startswith("The ") and r["input"]
        assert instruction_problem(r["instruction"], SynthOptions()) is None
        assert "walnut" not in r["instruction"]  # its instance came back without an output
    pool = [s[0] for s in SEEDS] + [r["instruction"] for r in rows]
    for i, a in enumerate(pool):  # the paper's rule holds over the whole pool, seeds included
        for b in pool[:i]:
            assert rouge_l(a, b) < 0.7, (a, b)
    # the server sent a near-copy, a banned-word task and a punctuation-led task in every reply
    assert report.rejected["similar"] >= report.rounds * SynthOptions().requests_per_round
    assert report.rejected["banned_word"] > 0 and report.rejected["starts_with_punctuation"] > 0
    from fslm.tasks.instructions import load_instructions

    items, duplicates = load_instructions(out)  # fslm distill reads it as is
    assert len(items) == 20 and duplicates == 0


def test_dedup_rejects_a_near_duplicate_and_keeps_a_new_instruction(seeds_file):
    class Scripted:
        id = "scripted"

        def generate(self, requests, params):
            if requests[0][-1]["content"].startswith("Come up"):
                text = "9. Give three tips for staying very healthy.\n10. Name the largest desert on Earth."
                return [TeacherReply(text, 0.0, "stop")] + [TeacherReply("", 0.0, "stop")] * (len(requests) - 1)
            return [TeacherReply("Input: <noinput>\nOutput: The Antarctic desert.", 0.0, "stop") for _ in requests]

    worker = _Round(Scripted(), load_seed_tasks(seeds_file), SynthOptions(seed=0))
    made = worker.run(0, room=10)
    assert [r["instruction"] for r in made] == ["Name the largest desert on Earth."]
    assert made[0]["input"] == "" and made[0]["output"] == "The Antarctic desert."
    assert worker.rejected == {"similar": 1}
    assert rouge_l("Give three tips for staying very healthy.", SEEDS[0][0]) >= 0.7  # the rule, not a lucky miss


def test_same_seed_same_file_other_seed_other_file(teacher_url, seeds_file, tmp_path):
    files = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synth(
            tmp_path / f"{name}.jsonl",
            teacher=http(teacher_url),
            seeds=seeds_file,
            options=SynthOptions(n=12, seed=seed),
        )
        files.append((tmp_path / f"{name}.jsonl").read_bytes())
    assert files[0] == files[1]
    assert files[0] != files[2]


def test_interrupted_then_resumed_equals_uninterrupted(teacher_url, seeds_file, tmp_path):
    options = SynthOptions(n=30, seed=5, requests_per_round=2)
    whole = tmp_path / "whole.jsonl"
    synth(whole, teacher=http(teacher_url), seeds=seeds_file, options=options)

    class Killed(Exception):
        pass

    def die_after_first_round(done: int, total: int) -> None:
        if done:
            raise Killed

    part = tmp_path / "part.jsonl"
    with pytest.raises(Killed):
        synth(part, teacher=http(teacher_url), seeds=seeds_file, options=options, progress=die_after_first_round)
    written = len(read_lines(part))
    assert 0 < written < options.n
    with part.open("ab") as fh:  # a write cut short by the kill
        fh.write(b'{"id": "synth-0000')
    report = synth(part, teacher=http(teacher_url), seeds=seeds_file, options=options)
    assert report.already_done == written and report.repaired_bytes == len(b'{"id": "synth-0000')
    assert part.read_bytes() == whole.read_bytes()
    again = synth(
        part, teacher=lambda: pytest.fail("nothing left to do: no teacher"), seeds=seeds_file, options=options
    )
    assert again.written == 0 and again.teacher == ""


def test_resuming_with_another_seed_is_refused(teacher_url, seeds_file, tmp_path):
    out = tmp_path / "s.jsonl"
    synth(out, teacher=http(teacher_url), seeds=seeds_file, options=SynthOptions(n=4, seed=1))
    with pytest.raises(DataError, match=r"different setup \(seed: file has 1, this run has 2\)"):
        synth(out, teacher=http(teacher_url), seeds=seeds_file, options=SynthOptions(n=8, seed=2))


def test_local_teacher_runs_the_same_loop(tiny_engine, seeds_file, tmp_path):
    """A tiny random model rarely writes a usable task: the run must end cleanly (records or a stall), not hang."""
    options = SynthOptions(n=2, seed=0, max_new_tokens=24, requests_per_round=2, max_stalled_rounds=2)
    report = synth(tmp_path / "l.jsonl", teacher=LocalTeacher(tiny_engine), seeds=seeds_file, options=options)
    assert report.written == 2 or report.stalled
    assert report.proposed > 0 and report.teacher.startswith("local:")


def test_filters_and_parsers():
    o = SynthOptions()
    assert instruction_problem("Hi there", o) == "too_short"
    assert instruction_problem("Draw a map of the town.", o) == "banned_word"
    assert instruction_problem("Plotting ahead is wise, explain why.", o) is None  # whole words only
    assert instruction_problem("¿Qué hora es ahora mismo?", o) == "non_ascii_start"
    assert instruction_problem('"Quote" this short sentence please.', o) == "starts_with_punctuation"
    assert instruction_problem(" ".join(["word"] * 151), o) == "too_long"
    assert parse_instructions("Sure!\n9. Do A thing now.\nTask 10: Do B thing now.") == [
        "Do A thing now.",
        "Do B thing now.",
    ]
    assert parse_instance("Input: <noinput>\nOutput: Yes.") == ("", "Yes.")
    assert parse_instance("Input: 2, 3\nOutput:\nThe sum is 5.") == ("2, 3", "The sum is 5.")
    assert parse_instance("Just the answer.") == ("", "Just the answer.")
    assert parse_instance("Input: only an input") is None


def test_seed_tasks_file_is_validated(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(json.dumps({"instruction": "Ok task here.", "instances": []}) + "\n")
    with pytest.raises(DataError, match=r"seeds.jsonl: line 1: field 'instances'"):
        load_seed_tasks(bad)
    bad.write_text(json.dumps({"instruction": "x", "instances": [{"input": "", "output": "y"}]}) + "\n{oops\n")
    with pytest.raises(DataError, match="line 2"):
        load_seed_tasks(bad)
    assert load_seed_tasks(write_seeds(tmp_path / "ok.jsonl"))[1] == SeedTask(*SEEDS[1])


def test_the_shared_seed_tasks_load():
    from fslm.distill.synth import default_seed_path

    if not default_seed_path().is_file():
        pytest.skip("no $FSLM_DATA_DIR/alpaca/seed_tasks.jsonl here")
    seeds = load_seed_tasks()
    assert len(seeds) == 175 and all(s.instruction and s.output for s in seeds)


def test_cli_writes_n_records_and_resumes(teacher_url, seeds_file, tmp_path):
    from typer.testing import CliRunner

    from fslm.cli import app

    out = tmp_path / "cli.jsonl"
    argv = [
        "synth",
        "--out",
        str(out),
        "--seeds",
        str(seeds_file),
        "--teacher-url",
        teacher_url,
        "--teacher-model",
        "m",
    ]
    first = CliRunner().invoke(app, [*argv, "--n", "5", "--seed", "2", "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["written"] == 5 and len(read_lines(out)) == 5
    more = CliRunner().invoke(app, [*argv, "--n", "9", "--seed", "2"])
    assert more.exit_code == 0, more.output
    assert "already in the file (resumed)" in more.stdout and "rejected similar" in more.stdout
    assert len(read_lines(out)) == 9
    reseeded = CliRunner().invoke(app, [*argv, "--n", "12", "--seed", "3"])
    assert reseeded.exit_code == 2 and "different setup" in reseeded.stderr and len(read_lines(out)) == 9
