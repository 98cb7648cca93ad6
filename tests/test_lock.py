"""The lock check that CI runs: it passes on the committed files and catches each way the two can drift apart."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / ".ci" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edited(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = (ROOT / name).read_text()
    assert old in text, old
    out = tmp_path / Path(name).name
    out.write_text(text.replace(old, new, 1))
    return out


def test_the_committed_lock_agrees_with_pyproject(check):
    assert check.problems(ROOT / "pyproject.toml", ROOT / "requirements" / "lock.txt") == []


def test_a_new_dependency_missing_from_the_lock(check, tmp_path):
    pyproject = edited(tmp_path, "pyproject.toml", '"tenacity>=8",', '"tenacity>=8",\n    "left-pad>=1",')
    assert check.problems(pyproject, ROOT / "requirements" / "lock.txt") == [
        "left-pad>=1 is in pyproject.toml but not pinned in lock.txt"
    ]


def test_a_range_the_pin_falls_outside(check, tmp_path):
    pyproject = edited(tmp_path, "pyproject.toml", '"httpx>=0.27"', '"httpx>=99"')
    (problem,) = check.problems(pyproject, ROOT / "requirements" / "lock.txt")
    assert problem.startswith("lock.txt pins httpx==") and "outside pyproject.toml's httpx>=99" in problem


def test_a_dependency_removed_from_pyproject(check, tmp_path):
    pyproject = edited(tmp_path, "pyproject.toml", '    "tenacity>=8",\n', "")
    assert check.problems(pyproject, ROOT / "requirements" / "lock.txt") == [
        "lock.txt pins tenacity for fslm, but pyproject.toml no longer declares it"
    ]


def test_the_all_extra_must_be_the_union_of_the_others(check, tmp_path):
    pyproject = edited(tmp_path, "pyproject.toml", '    "PyStemmer>=2.2",\n    "sentence', '    "sentence')
    assert check.problems(pyproject, ROOT / "requirements" / "lock.txt") == [
        "pyproject.toml: extra 'all' misses PyStemmer>=2.2"
    ]


def test_an_unpinned_line_in_the_lock(check, tmp_path):
    lock = edited(tmp_path, "requirements/lock.txt", "absl-py==", "absl-py @ file:///somewhere\nabsl-py-old==")
    assert "lock.txt holds an unpinned line for absl-py" in check.problems(ROOT / "pyproject.toml", lock)
