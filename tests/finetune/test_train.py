"""Training lowers the loss, writes a runnable trained-stack folder, and the adapters change the stages' outputs."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from fslm.cli import app
from fslm.config import load_stack_config
from fslm.errors import ConfigError
from fslm.finetune import TrainOptions, finetune
from fslm.stack import Stack, generation_params
from fslm.stack_checks import validate_stack

FAST = dict(epochs=6, batch_size=4, lr=3e-3, rank=8, alpha=16, save_every=10, threads=1)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from fslm.engine import load_engine

    from .conftest import distilled_records, tiny_stack

    root = tmp_path_factory.mktemp("trained")
    (root / "stack.yaml").write_text(yaml.safe_dump(tiny_stack(tiny_model_dir)))
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in distilled_records(16)))
    engine = load_engine(str(tiny_model_dir))
    report = finetune(
        root / "stack.yaml", root / "d.jsonl", root / "out", TrainOptions(**FAST), engine=engine, eval_loss=True
    )
    return root, report, engine


def test_training_reduces_the_loss_of_every_stage(trained):
    _, report, _ = trained
    assert set(report.stages) == {"intent", "facts", "answer"}
    for name, s in report.stages.items():
        assert s["steps"] == 6 * 4 and s["examples"] == 16
        assert s["loss_after"] < 0.5 * s["loss_before"], (name, s)
        assert s["final_loss"] < s["first_loss"]


def test_the_folder_is_a_runnable_trained_stack(trained):
    root, report, _ = trained
    out = root / "out"
    for name in ("intent", "facts", "answer"):
        folder = out / "adapters" / name
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
        with safe_open(folder / "adapter_model.safetensors", "pt") as fh:
            assert any("lora_A" in k for k in fh.keys())
    data = yaml.safe_load((out / "stack.yaml").read_text())
    assert [s["adapter"] for s in data["stages"]] == ["adapters/intent", "adapters/facts", "adapters/answer"]
    assert validate_stack(out / "stack.yaml").name == "tiny"
    log = json.loads((out / "train_log.json").read_text())
    steps = log["stages"]["intent"]["steps"]
    assert [s["step"] for s in steps] == list(range(1, 25)) and all(s["loss"] > 0 and s["tokens"] > 0 for s in steps)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert report.stack_path == str(out / "stack.yaml")


def test_a_trained_adapter_changes_that_stages_output(trained, tiny_model_dir):
    from fslm.engine import load_engine

    root, _, engine = trained
    prompt = "What is 3 plus 9?"
    base = Stack.load(root / "stack.yaml", engine=load_engine(str(tiny_model_dir))).run(prompt)
    tuned = Stack.load(root / "out" / "stack.yaml", engine=engine).run(prompt)
    assert tuned.trace[0].adapter == "intent" and tuned.trace[0].output != base.trace[0].output
    assert tuned.trace[0].output.startswith("The user wants")  # learned the distilled intent's form
    # the same adapter, switched off, gives back the base model's text: the change is the adapter's doing
    params = generation_params(load_stack_config(root / "stack.yaml").stages[0])
    assert engine.generate([tuned.trace[0].input], params, adapter=None)[0].text == base.trace[0].output
    assert engine.generate([tuned.trace[0].input], params, adapter="intent")[0].text == tuned.trace[0].output


def test_rerun_skips_finished_stages_and_refuses_other_options(trained):
    root, _, engine = trained
    again = finetune(root / "stack.yaml", root / "d.jsonl", root / "out", TrainOptions(**FAST), engine=engine)
    assert {s.get("skipped") for s in again.stages.values()} == {"already trained"}
    with pytest.raises(ConfigError, match="trained with other options or data"):
        finetune(
            root / "stack.yaml", root / "d.jsonl", root / "out", TrainOptions(**{**FAST, "lr": 1e-3}), engine=engine
        )


def test_gradient_checkpointing_trains_the_same_adapters(trained, monkeypatch):
    root, _, engine = trained
    calls = []
    enable = engine.base_model.activation_checkpointing_enable
    monkeypatch.setattr(engine.base_model, "activation_checkpointing_enable", lambda *a: calls.append(a) or enable(*a))
    finetune(
        root / "stack.yaml",
        root / "d.jsonl",
        root / "recomputed",
        TrainOptions(**FAST, gradient_checkpointing=True),
        engine=engine,
    )
    for stage in ("intent", "facts", "answer"):
        files = [root / out / "adapters" / stage / "adapter_model.safetensors" for out in ("out", "recomputed")]
        with safe_open(files[0], "pt") as a, safe_open(files[1], "pt") as b:
            assert set(a.keys()) == set(b.keys())
            for key in a.keys():
                x, y = a.get_tensor(key), b.get_tensor(key)
                assert float((x - y).norm()) <= 1e-3 * float(x.norm()) + 1e-6, (stage, key)
    assert len(calls) == 3  # once per stage's training loop
    assert not engine.base_model.get_decoder().gradient_checkpointing  # and off again for what runs next


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no distilled records"),
        (b'{"id": "a", "prompt": "p", "targets": {"intent": 3}}\n', "line 1 (id 'a'): no target text"),
        (b'{"id": "a"\n', "line 1: corrupt distilled record"),
    ],
)
def test_cli_bad_distilled_data_exits_2(tmp_path, stack_file, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    result = CliRunner().invoke(
        app, ["finetune", "--stack", str(stack_file), "--data", str(path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
