"""Optional extras: the core verbs import none of them, and a verb whose extra is missing says how to install it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

import fslm.extras
from fslm.cli import app
from fslm.extras import EXTRAS, MissingExtraError, missing, require

# Runs a CLI verb in a fresh interpreter where every extra's packages are invisible to the import system (find_spec
# returns None, import fails), exactly as if they were not installed.
WITHOUT_EXTRAS = """
import importlib.machinery, sys
BLOCKED = set({blocked!r})
class Hidden(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = Hidden
from fslm.cli import main
sys.argv = ["fslm", *{argv!r}]
main()
"""


def run_without_extras(*argv: str) -> subprocess.CompletedProcess:
    blocked = sorted({name for names in EXTRAS.values() for name in names})
    code = WITHOUT_EXTRAS.format(blocked=blocked, argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_every_extra_is_installed_in_the_test_environment():
    assert {extra: missing(extra) for extra in EXTRAS} == {extra: [] for extra in EXTRAS}


def test_require_names_the_extra_and_the_install_command(monkeypatch):
    real = fslm.extras.find_spec
    monkeypatch.setattr(fslm.extras, "find_spec", lambda name: None if name == "bm25s" else real(name))
    assert missing("retrieve") == ["bm25s"]
    with pytest.raises(MissingExtraError, match=r"BM25 needs fslm's 'retrieve' extra \(missing: bm25s\)"):
        require("retrieve", "BM25")
    require("serve", "the server")  # installed: no error


@pytest.mark.parametrize(("verb", "extra"), [("serve", "serve"), ("eval", "eval"), ("route", "collaborate")])
def test_a_verb_without_its_extra_prints_the_install_command(monkeypatch, verb, extra):
    blocked = EXTRAS[extra][0]
    real = fslm.extras.find_spec
    monkeypatch.setattr(fslm.extras, "find_spec", lambda name: None if name == blocked else real(name))
    result = CliRunner().invoke(app, [verb, "--help"])
    assert result.exit_code == 2
    assert f"pip install 'fslm[{extra}]'" in result.output and result.output.count("error:") == 1


def test_models_and_run_need_only_the_core(tiny_model_dir, tmp_path):
    listed = run_without_extras("models")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "smollm2-135m" in listed.stdout
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "base_model": str(tiny_model_dir),
                "stages": [
                    {"name": "facts", "instruction": "List facts.", "generation": {"max_new_tokens": 4}},
                    {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "facts"]},
                ],
            }
        )
    )
    ran = run_without_extras("run", "--stack", str(stack), "--json", "What is the capital of France?")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert [s["stage"] for s in json.loads(ran.stdout)["trace"]] == ["facts", "answer"]
    served = run_without_extras("serve")
    assert served.returncode == 2 and "pip install 'fslm[serve]'" in served.stderr
