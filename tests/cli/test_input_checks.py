"""User input is checked before any model loads: one `error:` line, exit 2, torch never imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Runs the CLI in a fresh interpreter, then reports (on the last stdout line) whether torch was ever imported.
PROBE = """
import sys
from fslm.cli import main
sys.argv = ["fslm", *{argv!r}]
try:
    main()
except SystemExit as exit:
    code = exit.code
print("torch imported:", "torch" in sys.modules)
sys.exit(code)
"""


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    code = PROBE.format(argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", ""], "empty prompt"),
        (["run", " \n\t "], "empty prompt"),
        (["run", "caf\udce9 au lait"], "character 4 is an undecodable byte"),  # b"caf\xe9" from a latin-1 shell
        (["generate", ""], "empty prompt"),
        (["generate", "\udcff"], "undecodable byte"),
    ],
)
def test_bad_prompts_fail_before_the_model_loads(argv, message):
    proc = run_cli(*argv)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and message in errors[0], proc.stderr
    assert proc.stdout.strip().endswith("torch imported: False")


def test_a_missing_stack_file_fails_before_the_model_loads(tmp_path):
    proc = run_cli("run", "--stack", str(tmp_path / "nope.yaml"), "Hello?")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nope.yaml: stack file not found" in errors[0], proc.stderr
    assert proc.stdout.strip().endswith("torch imported: False")


def test_run_prints_no_library_warnings(tiny_model_dir, tmp_path):
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        f"name: tiny\nbase_model: {tiny_model_dir}\nstages:\n"
        "  - {name: answer, instruction: Answer., generation: {max_new_tokens: 4}}\n"
    )
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("fslm")), "run", "--stack", str(stack), "--json", "What is 2+2?"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "deprecated" not in proc.stderr, proc.stderr
