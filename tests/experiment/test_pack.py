"""`fslm stack pack`: a trained stack becomes a folder that runs from anywhere, with relative paths inside."""

from __future__ import annotations

import shutil

import pytest
import typer
import yaml
from typer.testing import CliRunner

from fslm.errors import ConfigError, InputError
from fslm.stack import Stack
from fslm.stack_pack import pack_stack

from .conftest import tiny_stack

PROMPT = "What is the capital of France?"


@pytest.fixture()
def run_dir(tiny_model_dir, tiny_adapters, tmp_path):
    """A finetune-like folder whose stack points at adapters elsewhere by absolute path, plus a retrieve stage."""
    from fslm.retrieve import Passage, Retriever

    folder = tmp_path / "run"
    folder.mkdir()
    Retriever.build([Passage("p1", "Paris is the capital of France."), Passage("p2", "Spiders have eight legs.")]).save(
        tmp_path / "elsewhere" / "index"
    )
    data = tiny_stack(tiny_model_dir, tiny_adapters)
    data["stages"].insert(0, {"name": "related", "retrieve": {"index": "../elsewhere/index", "k": 1}})
    data["stages"][-1]["sees"] = ["prompt", "related", "intent"]
    (folder / "stack.yaml").write_text(yaml.safe_dump(data))
    (folder / "train_log.json").write_text("{}")
    return folder


def test_the_packed_folder_runs_from_another_cwd_and_after_a_move(run_dir, tmp_path, monkeypatch):
    expected = Stack.load(run_dir / "stack.yaml").run(PROMPT)
    path = pack_stack(run_dir, tmp_path / "packed")
    packed = tmp_path / "packed"
    written = yaml.safe_load(path.read_text())
    assert [s.get("adapter") for s in written["stages"]] == [None, "adapters/intent", "adapters/answer"]
    assert written["stages"][0]["retrieve"]["index"] == "indexes/related"
    assert sorted(p.name for p in (packed / "adapters" / "intent").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (packed / "train_log.json").is_file() and (packed / "indexes" / "related" / "manifest.json").is_file()
    moved = tmp_path / "far" / "away"
    moved.parent.mkdir()
    shutil.move(str(packed), str(moved))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = Stack.load(moved / "stack.yaml").run(PROMPT)
    assert result.answer == expected.answer and result.outputs == expected.outputs
    assert result.outputs["related"].startswith("[1] Paris is the capital")


def test_pack_refuses_what_it_cannot_pack(run_dir, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError, match="not an empty folder"):
        pack_stack(run_dir, tmp_path / "full")
    with pytest.raises(InputError, match="no stack.yaml here"):
        pack_stack(tmp_path / "full", tmp_path / "new")
    data = yaml.safe_load((run_dir / "stack.yaml").read_text())
    data["stages"][1]["adapter"] = "gone/intent"
    (run_dir / "stack.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="stages.1.adapter"):
        pack_stack(run_dir, tmp_path / "new")
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.pack-*"))


def test_cli_pack(run_dir, tmp_path):
    from fslm.cli.stack import pack_command

    app = typer.Typer()
    app.command("pack")(pack_command)
    app.command("noop")(lambda: None)  # two commands: invoked as `pack RUN_DIR`, as `fslm stack pack` is
    runner = CliRunner()
    result = runner.invoke(app, ["pack", str(run_dir), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "packed" in result.output and (tmp_path / "p" / "stack.yaml").is_file()
    result = runner.invoke(app, ["pack", str(run_dir), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "not an empty folder" in result.output
