"""Every verb checks what a person typed before it loads a model: one `error:` line, exit 2, torch never imported.

All bad inputs run in ONE fresh interpreter (a CliRunner per case), which reports after each case whether torch
or transformers got imported; the first case that loads anything is the one that fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

RUNNER = """
import json, sys
from typer.testing import CliRunner
from fslm.cli import app

results = []
for argv in json.load(sys.stdin):
    r = CliRunner().invoke(app, argv)
    results.append({"code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr, "exception": repr(r.exception),
                    "loaded": sorted(m for m in ("torch", "transformers") if m in sys.modules)})
print(json.dumps(results))
"""

MISSING_MODEL = "unknown model 'gpt-17'"  # its message goes on to list the known models, one per line

# (argv, what the error line says); {model} {stack} {missing} {file} {data} {distilled} {tmp} are filled in below
CASCADE = ["--small", "{model}", "--large", "{model}", "--threshold", "0.5"]
DISTILL = ["distill", "--stack", "{stack}", "--data", "{data}", "--out", "{tmp}/d.jsonl"]
FINETUNE = ["finetune", "--stack", "{stack}", "--data", "{distilled}", "--out", "{tmp}/ft"]
CURATE = ["curate", "--data", "{data}", "--model", "{model}", "--out", "{tmp}/c.json"]
SYNTH = ["synth", "--out", "{tmp}/s.jsonl", "--seeds", "{seeds}"]
CASES = [
    # run
    (["run", "--stack", "{bad_model_stack}", "Hi"], "base_model: unknown model 'gpt-17'"),
    (["run", "--stack", "{stack}", "\udcff\udcfe"], "undecodable byte"),
    (
        ["run", "--stack", "{stack}", "--engine", "vlm", "Hi"],
        "unknown engine 'vlm'; choose hf, llamacpp, openai, vllm, auto",
    ),
    (["serve", "--stack", "{stack}", "--engine", "gpu"], "unknown engine 'gpu'"),
    # generate
    (["generate", "-m", "{model}", "-n", "0", "Hi"], "--max-new-tokens"),
    (["generate", "-m", "{model}", "-n", "-5", "Hi"], "--max-new-tokens"),
    (["generate", "-m", "gpt-17", "Hi"], "--model: " + MISSING_MODEL),
    (["generate", "-m", "{model}", "--draft", "gpt-17", "Hi"], "--draft: " + MISSING_MODEL),
    (["generate", "-m", "{model}", "--dtype", "float8", "Hi"], "--dtype 'float8'"),
    (["generate", "-m", "{model}", "--amateur", "{model}", "--alpha", "2", "Hi"], "--alpha must be in (0, 1]"),
    (["generate", "-m", "{model}", "--draft", "{model}", "--amateur", "{model}", "Hi"], "choose one of"),
    (["generate", "-m", "{model}", "--draft-tokens", "3", "Hi"], "--draft-tokens applies"),
    (["generate", "-m", "{model}", "--stop", "", "Hi"], "--stop string is empty"),
    (["generate", "-m", "{model}", "--stop", "\udcff", "Hi"], "--stop string is not valid text"),
    (["generate", "-m", "{model}", "--engine", "x", "Hi"], "unknown engine 'x'"),
    (["generate", "-m", "{model}", "--engine", "auto", "--draft", "{model}", "Hi"], "--engine auto: --draft"),
    (["generate", "-m", "{model}", "--expert-delta", "gpt-17:{model}", "Hi"], "--expert-delta TUNED: " + MISSING_MODEL),
    (["generate", "-m", "{model}", "--expert-delta", "{model}", "Hi"], "expected TUNED:BASE"),
    (["generate", "-m", "{model}", "--expert-delta", "{model}:{model}+{missing}", "Hi"], "is not a folder"),
    (["generate", "-m", "{model}", "--expert-delta", "{model}:{model}", "--delta-alpha", "nan", "Hi"], "finite number"),
    (["generate", "-m", "{model}", "--expert-delta", "{model}:{model}", "--amateur", "{model}", "Hi"], "choose one of"),
    (["generate", "-m", "{model}", "--delta-alpha", "0.5", "Hi"], "--delta-alpha applies to proxy-tuning"),
    (["generate", "-m", "{model}", "--engine", "auto", "--expert-delta", "{model}:{model}", "Hi"], "--engine auto"),
    (["generate", "-m", "{model}", "--temperature", "9", "Hi"], "--temperature"),
    (["generate", "-m", "{model}", "--amateur", "{model}", "--temperature", "0.5", "Hi"], "leave --temperature at 0"),
    (["generate", "-m", "{model}", "--temperature", "0.7", "--top-p", "0", "Hi"], "--top-p"),
    # eval
    (["eval", "--model", "gpt-17", "--tasks", "arc_easy"], "--model: " + MISSING_MODEL),
    (["eval", "--stack", "{missing}", "--tasks", "arc_easy"], "stack file not found"),
    (["eval", "--model", "{model}", "--stack", "{stack}", "--tasks", "arc_easy"], "not both"),
    (
        ["eval", "--model", "{model}", "--tasks", "arc_easy", "--delta-alpha", "2"],
        "--delta-alpha applies to proxy-tuning",
    ),
    (["eval", "--model", "{model}", "--tasks", "arc_easy", "-k", "-1"], "--num-fewshot"),
    (["eval", "--model", "{model}", "--tasks", "arc_easy", "--out", "{file}"], "is a file, not a folder"),
    (["eval", "--model", "{model}", "--tasks", "arc_easy", "--engine", "x"], "unknown engine 'x'"),
    (["eval", "--stack", "{stack}", "--tasks", "arc_easy", "--engine", "x"], "unknown engine 'x'"),
    # cascade
    (["cascade", " ", *CASCADE], "empty prompt"),
    (["cascade", "\udcff", *CASCADE], "undecodable byte"),
    (["cascade", "Hi", *CASCADE, "--small", "gpt-17"], "--small: " + MISSING_MODEL),
    (["cascade", "Hi", *CASCADE, "--large", "{missing}"], "stack file not found"),
    (["cascade", *CASCADE, "--task", "nope"], "unknown task 'nope'"),
    (["cascade", *CASCADE, "--task", "arc_easy", "--signal", "x"], "unknown signal 'x'"),
    (["cascade", *CASCADE, "--task", "arc_easy", "--split", "x"], "no split 'x'"),
    # route (its sentence embedder is a model too)
    (["route", "predict", "\udcff", "--router", "{tmp}"], "undecodable byte"),
    (["route", "predict", "", "--router", "{tmp}"], "empty prompt"),
    (["route", "train", "--small", "{tmp}", "--large", "{tmp}", "--out", "{tmp}/r", "--c", "0"], "--c must be > 0"),
    # retrieve
    (["retrieve", "search", "{tmp}", "\udcff"], "query is not valid text"),
    (["retrieve", "index", "{file}", "--out", "{file}/index"], "is a file, not a folder"),
    # distill: teacher options fail before any record is read or written
    ([*DISTILL, "--teacher", "gpt-17"], "--teacher: " + MISSING_MODEL),
    ([*DISTILL, "--teacher-url", "ftp://x", "--teacher-model", "m"], "must start with http"),
    ([*DISTILL, "--teacher-model", "m"], "go with --teacher-url"),
    ([*DISTILL, "--timeout", "0"], "--timeout must be > 0"),
    ([*DISTILL, "--limit", "0"], "--limit"),
    ([*DISTILL, "--engine", "x"], "unknown engine 'x'"),
    ([*DISTILL, "--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "m", "--engine", "auto"], "HTTP teacher"),
    ([*DISTILL, "--out", "{file}/d.jsonl"], "is a file, not a folder"),
    # finetune: checked before fslm.finetune (and so torch) is imported
    ([*FINETUNE, "--data", "{missing}"], "distilled file not found"),
    ([*FINETUNE, "--stages", "x"], "unknown stage"),
    ([*FINETUNE, "--rank", "0"], "--rank"),
    ([*FINETUNE, "--lr", "0"], "--lr must be > 0"),
    ([*FINETUNE, "--threads", "-2"], "--threads"),
    ([*FINETUNE, "--targets", ","], "--targets names no module"),
    ([*FINETUNE, "--precision", "fp8"], "--precision 'fp8'"),
    ([*FINETUNE, "--save-dtype", "bf8"], "--save-dtype 'bf8': expected float32 or float16"),
    ([*FINETUNE, "--out", "{file}/ft"], "is a file, not a folder"),
    # curate: options, files and records are checked before the scoring model loads
    ([*CURATE, "--keep", "0"], "--keep must be a fraction in (0, 1]"),
    ([*CURATE, "--by", "quality"], "--by quality needs --labels"),
    ([*CURATE, "--by", "vibes"], "--by 'vibes': choose one of perplexity, quality, both"),
    ([*CURATE, "--plot", "{tmp}/h.jpg"], "expected a .png"),
    ([*CURATE, "--labels", "{missing}"], "labels file not found"),
    ([*CURATE, "--data", "{missing}"], "data file not found"),
    ([*CURATE, "--data", "{file}"], "a-file: line 1: malformed JSON"),
    ([*CURATE, "--labels", "{data}"], "alpaca.json: record 1: field 'label' must be good or bad"),
    ([*CURATE, "--model", "gpt-17"], "--model: " + MISSING_MODEL),
    ([*CURATE, "--out", "{file}/c.json"], "is a file, not a folder"),
    ([*CURATE, "--judge", "{model}", "--labels", "{data}"], "--judge labels records for the quality classifier"),
    ([*CURATE, "--judge", "{model}", "--by", "random"], "--by random ranks by no score: leave out --judge"),
    ([*CURATE, "--judge", "gpt-17"], "--judge: " + MISSING_MODEL),
    ([*CURATE, "--judge", "{model}", "--judge-dtype", "float8"], "--judge-dtype 'float8'"),
    ([*CURATE, "--judge", "{model}", "--judge-n", "1"], "--judge-n"),
    # synth: the seed tasks and teacher options are checked before a teacher is built
    (["synth", "--out", "{tmp}/s.jsonl"], "seed_tasks.jsonl: seed tasks file not found"),
    ([*SYNTH, "--seeds", "{distilled}"], "distilled.jsonl: line 1: field 'instruction' must be a non-empty string"),
    ([*SYNTH, "--similarity", "1.5"], "--similarity must be in (0, 1]"),
    ([*SYNTH, "--teacher", "gpt-17"], "--teacher: " + MISSING_MODEL),
    ([*SYNTH, "--teacher-model", "m"], "go with --teacher-url"),
    ([*SYNTH, "--teacher-url", "ftp://x", "--teacher-model", "m"], "must start with http"),
    ([*SYNTH, "--timeout", "0"], "--timeout must be > 0"),
    ([*SYNTH, "--teacher-dtype", "int3"], "--teacher-dtype 'int3': expected float32 or bfloat16"),
    # usage errors are one line too
    (["fintune"], "No such command 'fintune'"),
    (["run", "--bogus", "Hi"], "No such option: --bogus"),
    (["run"], "Missing argument"),
]


@pytest.fixture(scope="module")
def outcomes(tiny_model_dir, tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("input-checks")
    data = tmp / "data" / "arc_easy"
    data.mkdir(parents=True)
    record = {"query": "Question: What has eight legs?", "choices": ["a spider", "a dog"], "gold": 0}
    (data / "arc_easy.jsonl").write_text(json.dumps(record) + "\n")
    stack = {"name": "tiny", "base_model": str(tiny_model_dir), "stages": [{"name": "answer", "instruction": "A."}]}
    (tmp / "stack.yaml").write_text(yaml.safe_dump(stack))
    (tmp / "bad_model.yaml").write_text(yaml.safe_dump({**stack, "base_model": "gpt-17"}))
    (tmp / "bad_engine.yaml").write_text(yaml.safe_dump({**stack, "engine": "tpu"}))
    (tmp / "alpaca.json").write_text(json.dumps([{"instruction": "Two plus two?", "input": "", "output": "4"}]))
    (tmp / "distilled.jsonl").write_text(json.dumps({"id": "a", "prompt": "p", "targets": {"answer": "x"}}) + "\n")
    (tmp / "a-file").write_text("not a folder\n")
    seed = {"instruction": "Give three tips.", "instances": [{"input": "", "output": "Sleep."}]}
    (tmp / "seeds.jsonl").write_text(json.dumps(seed) + "\n")
    names = {
        "model": tiny_model_dir,
        "stack": tmp / "stack.yaml",
        "bad_model_stack": tmp / "bad_model.yaml",
        "bad_engine_stack": tmp / "bad_engine.yaml",
        "missing": tmp / "missing.yaml",
        "file": tmp / "a-file",
        "data": tmp / "alpaca.json",
        "distilled": tmp / "distilled.jsonl",
        "seeds": tmp / "seeds.jsonl",
        "tmp": tmp,
    }
    argvs = [[a.format(**names) for a in argv] for argv, _ in CASES]
    env = {**os.environ, "FSLM_DATA_DIR": str(tmp / "data"), "FSLM_CACHE_DIR": str(tmp / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER], input=json.dumps(argvs), capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return {" ".join(argv): result for (argv, _), result in zip(CASES, json.loads(proc.stdout), strict=True)}


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(argv)[:60] for argv, _ in CASES])
def test_bad_input_is_one_error_line_before_any_load(outcomes, argv, message):
    result = outcomes[" ".join(argv)]
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert result["code"] == 2, result
    assert lines and lines[0].startswith("error:") and message in lines[0], result
    if MISSING_MODEL not in message:
        assert len(lines) == 1, result
    assert result["stdout"] == "" and "Traceback" not in result["stderr"]
    assert result["loaded"] == [], f"{argv}: imported {result['loaded']} before failing"


def test_undecodable_argv_bytes_from_a_shell():
    """The real thing: bytes that are not UTF-8 in argv (Python hands them over as lone surrogates)."""
    fslm = str(Path(sys.executable).with_name("fslm"))
    proc = subprocess.run([fslm, "run", b"\xff\xfe"], capture_output=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        "error: prompt is not valid text: character 1 is an undecodable byte or lone surrogate (\\udcff); "
        "pass UTF-8 text"
    ]


def test_an_undecodable_file_name_prints_without_a_traceback(tiny_model_dir, tmp_path):
    """A file name with bytes that are not UTF-8 is a real file: printing it (stdout, strict UTF-8) must not fail."""
    stack = {"name": "tiny", "base_model": str(tiny_model_dir), "stages": [{"name": "answer", "instruction": "A."}]}
    path = os.path.join(os.fsencode(tmp_path), b"st\xffck.yaml")
    Path(os.fsdecode(path)).write_text(yaml.safe_dump(stack))
    fslm = str(Path(sys.executable).with_name("fslm"))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    proc = subprocess.run([fslm, "stack", "validate", path], capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"st\\udcffck.yaml" in proc.stdout and b"stack 'tiny'" in proc.stdout


def test_finetune_default_targets_match_the_library():
    from fslm.cli.finetune import PROJECTIONS
    from fslm.finetune import ALL_PROJECTIONS

    assert PROJECTIONS == ",".join(ALL_PROJECTIONS)


@pytest.mark.parametrize("verb", ["generate", "finetune"])
def test_no_library_warnings_reach_the_terminal(verb, tiny_model_dir, tmp_path):
    """transformers' FutureWarnings (fired by `generate` and LoRA training) are silenced at the CLI only."""
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        yaml.safe_dump(
            {"name": "t", "base_model": str(tiny_model_dir), "stages": [{"name": "answer", "instruction": "A."}]}
        )
    )
    distilled = tmp_path / "distilled.jsonl"
    rows = [
        {"id": f"r{i}", "prompt": f"{i} plus {i}?", "kept": True, "targets": {"answer": f"{2 * i}"}} for i in range(4)
    ]
    distilled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = {
        "generate": ["generate", "-m", str(tiny_model_dir), "--amateur", str(tiny_model_dir), "-n", "4", "Hi"],
        "finetune": ["finetune", "--stack", str(stack), "--data", str(distilled), "--out", str(tmp_path / "o")]
        + ["--batch-size", "2", "--rank", "2", "--json"],
    }[verb]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    fslm = str(Path(sys.executable).with_name("fslm"))
    proc = subprocess.run([fslm, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "deprecated" not in proc.stderr, proc.stderr


def test_an_encode_error_is_blamed_on_the_argument_it_came_from_or_raised():
    """`guarded` turns a UnicodeEncodeError into one error line only when its lone surrogates came from an argument."""
    import typer
    from typer.testing import CliRunner

    from fslm.cli.common import guarded

    def save(name: str = typer.Option(..., "--name"), other: str = typer.Option("x", "--other")) -> None:
        (name + " " + other).encode("utf-8")  # a writer refusing what the shell passed in

    app = typer.Typer()
    app.command()(guarded(save))
    blamed = CliRunner().invoke(app, ["--name", "caf\udce9"])
    assert blamed.exit_code == 2 and blamed.stderr.splitlines() == [
        "error: --name: \\udce9 (an undecodable byte from the shell) cannot be written as text; use UTF-8"
    ]

    def bug() -> None:
        "\udce9".encode("utf-8")  # not from the user: a traceback, as for any bug

    app = typer.Typer()
    app.command()(guarded(bug))
    result = CliRunner().invoke(app, [])
    assert isinstance(result.exception, UnicodeEncodeError)
