"""The run log (fslm.logs): what a run leaves in it, reading it back, and that it never makes a run fail."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import fslm.logs.db as logdb
import fslm.logs.recording as logrecord
import fslm.logs.store as logstore
from fslm.errors import DataError, InputError
from fslm.logs import (
    SCHEMA_VERSION,
    LogError,
    RunLog,
    export_runs,
    get_run,
    list_runs,
    log_path,
    logged_generate,
    logged_run,
    prune_runs,
    record,
    remove_runs,
    search_runs,
)
from fslm.logs.entries import bounded, parse_since, stack_entry
from fslm.settings import reset_settings

STAGES = [
    {"name": "intent", "instruction": "Restate.", "generation": {"max_new_tokens": 4}},
    {"name": "facts", "instruction": "Facts.", "sees": ["prompt", "intent"], "generation": {"max_new_tokens": 4}},
    {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "facts"], "generation": {"max_new_tokens": 4}},
]


@pytest.fixture()
def log_on(tmp_path, monkeypatch) -> Path:
    """Logging on, into a log under a fresh cache dir; notes already said by earlier tests forgotten."""
    monkeypatch.setenv("FSLM_LOG", "1")
    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FSLM_LOG_DB", raising=False)
    monkeypatch.setattr(logrecord, "_noted", set())
    reset_settings()
    yield tmp_path / "cache" / "logs.db"
    reset_settings()


@pytest.fixture()
def stack(tiny_engine, tiny_model_dir):
    from fslm.config import parse_stack_config
    from fslm.stack import Stack

    return Stack(parse_stack_config({"name": "tiny", "base_model": str(tiny_model_dir), "stages": STAGES}), tiny_engine)


def entry(prompt: str, answer: str = "", *, created: float | None = None, outputs=(), error=None, kind="run") -> dict:
    """A logged run without running a model (reading, searching and removing do not care where it came from)."""
    e = stack_entry(
        kind,
        prompt,
        {"stack": "tiny", "config_sha256": "0" * 64, "adapters": {}, "engine": {"model_ref": "m", "dtype": "float32"}},
        error=error,
        started=time.time() if created is None else created,
        wall_seconds=0.25,
    )
    e["answer"] = answer
    e["trace"] = [
        {"stage": f"s{i}", "input": "in", "output": text, "tokens_in": 2, "tokens_out": 1, "seconds": 0.1}
        for i, text in enumerate([*outputs, answer])
    ]
    return e


def notes(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]


# ---- what a run leaves in the log ----------------------------------------------------------------------------------


def test_a_stack_run_is_logged_with_its_trace_and_identity(log_on, tiny_model_dir, tiny_adapters, tmp_path):
    from fslm.config import load_stack_config
    from fslm.engine import load_engine
    from fslm.stack import Stack
    from fslm.stack_cache import adapter_digest

    stages = [dict(s) for s in STAGES]
    stages[0]["adapter"] = str(tiny_adapters["intent"])
    stages[2]["adapter"] = str(tiny_adapters["answer"])
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump({"name": "adapted", "base_model": str(tiny_model_dir), "stages": stages}))
    cfg = load_stack_config(path)
    engine = load_engine(str(tiny_model_dir))
    result = logged_run(Stack(cfg, engine), "What is the capital of France?")

    assert log_path() == log_on
    [summary] = list_runs()
    logged = get_run(summary["id"])
    assert logged["kind"] == "run" and logged["error"] is None and logged["request_id"] is None
    assert logged["prompt"] == result.prompt and logged["answer"] == result.answer
    assert logged["trace"] == json.loads(json.dumps(result.to_dict()["trace"]))  # every stage field, as given
    assert logged["tokens_in"] == sum(r.tokens_in for r in result.trace) > 0
    assert logged["stack"] == "adapted" and logged["stack_path"] == str(cfg.source_path)
    assert logged["config_sha256"] == hashlib.sha256(cfg.to_yaml().encode()).hexdigest()
    assert logged["adapters"] == {n: adapter_digest(tiny_adapters[n]) for n in ("intent", "answer")}
    assert logged["engine"] == {"model_ref": engine.model_ref, "dtype": "float32"}
    assert logged["wall_seconds"] >= logged["seconds"] > 0
    assert summary["stages"] == 3 and summary["answer"] == result.answer
    with sqlite3.connect(log_on) as conn:  # the indexed columns beside the JSON
        rows = conn.execute("SELECT stage, adapter, tokens_out FROM stages ORDER BY position").fetchall()
    assert rows == [(r.stage, r.adapter, r.tokens_out) for r in result.trace]


def test_the_log_is_private(log_on, stack):
    logged_run(stack, "Two plus two?")
    assert stat.S_IMODE(log_on.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_on.parent.stat().st_mode) == 0o700  # created for the log: the owner's only
    for side in log_on.parent.glob("logs.db-*"):  # WAL files SQLite may leave
        assert stat.S_IMODE(side.stat().st_mode) == 0o600


def test_a_failed_run_is_logged_with_its_error_and_still_raises(log_on, stack):
    with pytest.raises(InputError, match="max_prompt_tokens"):
        logged_run(stack, "fox " * 3000)
    [failed] = list_runs()
    assert failed["error"].startswith("InputError: prompt has") and failed["answer"] is None
    assert get_run(failed["id"])["trace"] == []


def test_generate_is_logged_as_a_one_stage_trace(log_on, tiny_model_dir):
    result = logged_generate("Two plus two?", model=str(tiny_model_dir), max_new_tokens=3)
    logged = get_run(list_runs()[0]["id"])
    assert logged["kind"] == "generate" and logged["answer"] == result.text
    assert logged["engine"]["dtype"] == "float32" and logged["engine"]["model_ref"]
    [stage] = logged["trace"]
    assert stage["stage"] == "greedy" and stage["output"] == result.text and stage["tokens_out"] == result.tokens_out
    assert logged["details"]["mode"] == "greedy"


def test_opting_out(log_on, stack, monkeypatch):
    logged_run(stack, "Two plus two?", log=False)
    assert not log_on.exists()
    monkeypatch.setenv("FSLM_LOG", "0")
    reset_settings()
    logged_run(stack, "Two plus two?")
    assert record(entry("x")) is None and not log_on.exists()


# ---- reading it back -------------------------------------------------------------------------------------------------


@pytest.fixture()
def filled(log_on) -> list[int]:
    day = 86_400
    now = time.time()
    return [
        record(entry("What is the capital of France?", "Paris.", created=now - 10 * day, outputs=["a city"])),
        record(entry("Which planet is largest?", "Jupiter.", created=now - 5 * day, outputs=["gas giant zebra"])),
        record(entry("Two plus two?", "", created=now - 1 * day, error="InputError: something odd")),
        record(entry("Name a colour 100% red_ish", "Red.", created=now)),
    ]


def test_list_is_newest_first_and_pages(filled):
    assert [r["id"] for r in list_runs()] == filled[::-1]
    assert [r["id"] for r in list_runs(2, 1)] == filled[2:0:-1]
    assert list_runs(1)[0]["prompt"].startswith("Name a colour") and list_runs(1)[0]["kind"] == "run"
    assert RunLog().count() == 4


def test_search_words_prefixes_outputs_and_errors(filled):
    assert [r["id"] for r in search_runs("fran")] == [filled[0]]  # a word's start is enough
    assert [r["id"] for r in search_runs("capital PARIS")] == [filled[0]]  # every word, any field, any case
    assert search_runs("capital Jupiter") == []
    assert [r["id"] for r in search_runs("zebra")] == [filled[1]]  # a stage's output
    assert [r["id"] for r in search_runs("odd")] == [filled[2]]  # the error
    assert [r["id"] for r in search_runs("100%")] == [filled[3]]
    assert search_runs('"unbalanced (quote* -not: AND') == []  # no FTS syntax reaches SQLite
    assert search_runs("\x00?!") == [] and search_runs("   ") != []  # no words: no filter


def test_search_without_fts5_falls_back_to_like(filled, log_on):
    with sqlite3.connect(log_on) as conn:
        conn.execute("DROP TABLE runs_fts")  # what a SQLite built without FTS5 leaves (the migration skips it)
    assert [r["id"] for r in search_runs("ranc")] == [filled[0]]  # substrings of prompt, answer, error
    assert [r["id"] for r in search_runs("red_ish 100%")] == [filled[3]]  # % and _ are literal
    assert search_runs("zebra") == []  # stage outputs are searched only with FTS5 (docs/logs.md)
    record(entry("A new one about France", "Yes."))  # writing works without the index too
    assert len(search_runs("france")) == 2


def test_show_export_since_and_ids(filled, tmp_path):
    whole = get_run(filled[1])
    assert whole["answer"] == "Jupiter." and whole["trace"][0]["output"] == "gas giant zebra"
    assert whole["time"].endswith("+00:00")
    with pytest.raises(InputError, match="no run 99"):
        get_run(99)
    buffer = io.StringIO()
    assert export_runs(buffer) == 4
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [e["id"] for e in lines] == filled and lines[1] == whole  # oldest first, whole entries
    since = parse_since(time.strftime("%Y-%m-%d", time.localtime(time.time() - 3 * 86_400)))
    out = tmp_path / "out" / "export.jsonl"
    out.parent.mkdir()
    assert export_runs(out, since=since) == 2
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == filled[2:]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and list(out.parent.iterdir()) == [out]  # renamed, no leftover
    with pytest.raises(InputError, match="--since 'yesterday'"):
        parse_since("yesterday")


def test_rm_and_prune(filled):
    with pytest.raises(InputError, match="no run 77"):
        remove_runs([filled[0], 77])
    assert RunLog().count() == 4  # all or nothing
    assert remove_runs([str(filled[0])]) == 1
    assert search_runs("france") == []  # gone from the index too
    assert prune_runs(older_than_days=2) == 1  # the 5-day-old one
    assert prune_runs(keep=1) == 1
    assert [r["id"] for r in list_runs()] == [filled[3]]
    with pytest.raises(InputError, match="--older-than DAYS or --keep N"):
        prune_runs()
    with pytest.raises(InputError, match="--keep"):
        prune_runs(keep=-1)
    assert prune_runs(keep=0) == 1 and list_runs() == []
    assert record(entry("after pruning")) == filled[3] + 1  # ids are never reused


def test_long_texts_are_stored_cut_with_a_marker(log_on, monkeypatch):
    monkeypatch.setenv("FSLM_LOG_MAX_CHARS", "1000")
    reset_settings()
    run_id = record(entry("x" * 5000, "short"))
    logged = get_run(run_id)
    assert logged["prompt"].startswith("x" * 1000) and "4000 more characters not kept" in logged["prompt"]
    assert logged["truncated"] is True and logged["answer"] == "short"
    assert list_runs()[0]["truncated"] is True


def test_bounded_walks_any_shape():
    value, cut = bounded({"a": ["ok", {"b": "y" * 50}], "n": 3, "s": "\ud800"}, 10)
    assert cut and value["a"][0] == "ok" and value["a"][1]["b"].startswith("y" * 10 + "\n[…")
    assert value["n"] == 3 and value["s"] == "\\ud800"  # a lone surrogate cannot be stored as UTF-8
    assert bounded(("t", 1), 10) == (["t", 1], False)


def test_reading_a_missing_log_creates_nothing(log_on):
    assert list_runs() == [] and search_runs("x") == [] and RunLog().count() == 0
    assert export_runs(io.StringIO()) == 0 and prune_runs(keep=0) == 0
    assert not log_on.exists()


# ---- the log never makes a run fail ----------------------------------------------------------------------------------


def test_a_corrupt_log_is_noted_once_and_the_run_succeeds(log_on, stack, capsys):
    log_on.parent.mkdir(parents=True)
    log_on.write_bytes(b"this is not a database, " * 100)
    first = logged_run(stack, "Two plus two?")
    second = logged_run(stack, "Which planet is largest?")
    assert first.answer is not None and second.trace
    [note] = notes(capsys)
    assert str(log_on) in note and "not an SQLite database" in note
    with pytest.raises(LogError, match="not a usable run log") as err:
        list_runs()  # reading is what the user asked for: an error (exit 2 in the CLI)
    assert isinstance(err.value, DataError)


def test_a_locked_log_is_noted_once_and_skipped(log_on, monkeypatch, capsys):
    monkeypatch.setattr(logdb, "BUSY_TIMEOUT_S", 0.2)
    assert record(entry("before")) == 1
    holder = sqlite3.connect(log_on, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write, for longer than the timeout
    try:
        t0 = time.perf_counter()
        assert record(entry("while locked")) is None
        assert record(entry("still locked")) is None
        assert time.perf_counter() - t0 < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    [note] = notes(capsys)
    assert "locked by another process" in note
    assert record(entry("after")) == 2  # the lock gone, logging goes on
    assert [r["prompt"] for r in list_runs()] == ["after", "before"]


@pytest.fixture()
def read_only(log_on):
    """Make the log file read-only: by its mode, or for root (who writes any mode) with the immutable attribute."""
    undo = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o400)
            undo.append(lambda: path.chmod(0o600))
            return
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("root writes any file, and chattr +i is not available here")
        undo.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=True))

    yield make
    for step in undo:
        step()


def test_a_read_only_log_is_noted_once_and_the_run_succeeds(log_on, stack, read_only, capsys):
    record(entry("before"))
    read_only(log_on)
    assert logged_run(stack, "Two plus two?").trace
    assert record(entry("refused")) is None
    [note] = notes(capsys)
    assert "read-only" in note
    assert [r["prompt"] for r in list_runs()] == ["before"]  # still readable


@pytest.mark.parametrize("blocker", ["parent_is_a_file", "log_is_a_folder"])
def test_an_unwritable_log_path_is_noted(log_on, stack, monkeypatch, tmp_path, capsys, blocker):
    if blocker == "parent_is_a_file":
        (tmp_path / "file").write_text("")
        target = tmp_path / "file" / "logs.db"
    else:
        target = tmp_path / "folder.db"
        target.mkdir()
    monkeypatch.setenv("FSLM_LOG_DB", str(target))
    reset_settings()
    assert logged_run(stack, "Two plus two?").trace
    [note] = notes(capsys)
    assert str(target) in note


def test_a_log_from_a_newer_fslm_is_left_alone(log_on, capsys):
    record(entry("x"))
    with sqlite3.connect(log_on) as conn:
        conn.execute("INSERT INTO log_schema VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    assert record(entry("y")) is None
    assert "newer than this fslm" in notes(capsys)[0]
    with pytest.raises(LogError, match="upgrade fslm"):
        list_runs()


def test_migrating_a_version_1_log_keeps_its_runs_and_indexes_them(log_on):
    log_on.parent.mkdir(parents=True)
    conn = sqlite3.connect(log_on, isolation_level=None)
    logdb.migrate(conn, log_on, upto=1)  # a log as the first schema left it: no search index
    conn.execute("BEGIN")
    old = logstore._insert(conn, {**entry("An old question about zebras", "Stripes."), "truncated": False})
    conn.execute("COMMIT")
    assert logdb.version(conn) == 1 and not logdb.has_fts(conn)
    conn.close()
    assert [r["id"] for r in search_runs("zebra")] == [old]  # opened: migrated, and the old run indexed
    assert record(entry("A new zebra question")) == old + 1
    with sqlite3.connect(log_on) as conn:
        assert [v for (v,) in conn.execute("SELECT version FROM log_schema ORDER BY version")] == [1, 2]
    assert len(search_runs("zebra")) == 2


# ---- concurrent writers ----------------------------------------------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from fslm.logs import record, stack_entry
start, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
while not start.exists():
    time.sleep(0.005)
ident = {"stack": name, "config_sha256": None, "adapters": {}, "engine": {"model_ref": "m", "dtype": None}}
missed = 0
for i in range(count):
    e = stack_entry("run", f"{name} prompt {i}", ident, started=time.time(), wall_seconds=0.0)
    missed += record(e) is None
print(missed)
"""


def test_two_processes_writing_at_once_lose_nothing(log_on, tmp_path):
    start = tmp_path / "go"
    env = {**os.environ, "FSLM_LOG": "1", "FSLM_LOG_DB": str(log_on)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(start), name, "60"], env=env, stdout=subprocess.PIPE, text=True
        )
        for name in ("serve", "cli")
    ]
    time.sleep(0.5)  # both interpreters up and waiting
    start.touch()
    seen = 0
    while any(p.poll() is None for p in procs):  # a reader meanwhile: WAL lets it read while they write
        seen = max(seen, len(list_runs(1000)))
        time.sleep(0.01)
    assert [p.communicate(timeout=60)[0].strip() for p in procs] == ["0", "0"]
    runs = list_runs(1000)
    assert len(runs) == 120 and len({r["id"] for r in runs}) == 120
    for name in ("serve", "cli"):
        assert sorted(r["prompt"] for r in runs if r["stack"] == name) == sorted(
            f"{name} prompt {i}" for i in range(60)
        )
    assert len(search_runs("prompt", 1000)) == 120  # the index got every one too
