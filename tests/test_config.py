import re
from pathlib import Path

import pytest

from fslm.config import default_stack_path, load_stack_config, parse_stack_config
from fslm.errors import ConfigError
from fslm.stack_checks import validate_stack

GOOD = {
    "name": "two",
    "base_model": "smollm2-135m",
    "stages": [
        {"name": "facts", "instruction": "List facts.", "sees": ["prompt"]},
        {
            "name": "answer",
            "instruction": "Answer.",
            "sees": ["prompt", "facts"],
            "template": "Q: {prompt}\nF: {facts}",
        },
    ],
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(text)
    return path


def test_default_stack_scores_options_and_chains_the_rest():
    cfg = load_stack_config(default_stack_path())
    assert [s.name for s in cfg.stages] == ["pick", "facts", "reasoning", "answer"]
    assert cfg.base_model == "smollm2-135m"
    pick = cfg.stages[0]
    assert pick.score is not None and pick.score.format == "raw" and pick.when == "has_options" and pick.final
    assert [s.when for s in cfg.stages[1:]] == ["no_options"] * 3 and cfg.stages[-1].final
    # The trained adapters ship with the package: fp16, <= 10 MB together.
    assert [s.adapter for s in cfg.stages] == [f"default/adapters/{s.name}" for s in cfg.stages]
    validate_stack(default_stack_path())  # every adapter folder is complete
    from safetensors import safe_open

    total = 0
    for stage in cfg.stages:
        folder = cfg.adapter_path(stage)
        total += sum(f.stat().st_size for f in folder.iterdir())
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as fh:
            assert {str(fh.get_tensor(k).dtype) for k in fh.keys()} == {"torch.float16"}
    assert total <= 10_000_000


def test_valid_config_round_trips_through_yaml(tmp_path):
    cfg = parse_stack_config(GOOD)
    again = load_stack_config(write(tmp_path, cfg.to_yaml()))
    assert again.model_dump() == cfg.model_dump()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["stages"][1].update(max_tokens=3), "stages.1.max_tokens"),
        (lambda d: d["stages"][1].update(generation={"max_new_tokens": "lots"}), "stages.1.generation.max_new_tokens"),
        (lambda d: d["stages"][1].update(generation={"temperature": -1}), "stages.1.generation.temperature"),
        (lambda d: d["stages"][0].update(sees=["answer"]), "stages.0.sees.0"),
        (lambda d: d["stages"][1].update(template="{nope}"), "stages.1.template"),
        (lambda d: d["stages"][1].update(name="facts"), "duplicate stage name"),
        (lambda d: d["stages"][0].update(name="Bad Name"), "stages.0.name"),
        (lambda d: d.update(stages=[]), "stages"),
        (lambda d: d.pop("name"), "name"),
        (lambda d: d.update(engine="tpu"), "engine: Input should be 'hf', 'llamacpp', 'openai', 'vllm' or 'auto'"),
    ],
)
def test_errors_name_the_file_and_field(tmp_path, mutate, expected):
    import copy

    import yaml

    data = copy.deepcopy(GOOD)
    mutate(data)
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_stack_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_malformed_yaml_names_line(tmp_path):
    path = write(tmp_path, "name: x\nstages: [\n  - {name: a\n")
    with pytest.raises(ConfigError, match=r"line \d+.*malformed YAML"):
        load_stack_config(path)


def test_yaml_is_safe_loaded(tmp_path):
    path = write(tmp_path, "!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_stack_config(path)


def test_missing_adapter_is_reported(tmp_path):
    import yaml

    data = {**GOOD, "stages": [dict(GOOD["stages"][0], adapter="adapters/facts"), GOOD["stages"][1]]}
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"stages\.0\.adapter: no adapter_config.json"):
        validate_stack(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_stack_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["stages"].insert(0, {"name": "calc", "tool": {"name": "calculator"}}),
            "stages.0 (calc) is a tool",
        ),
        (lambda d: d["stages"][0].update(model="qwen2.5-coder-0.5b"), "stages.0.model"),
        (
            lambda d: d["stages"][0].update(sees=["prompt", "answer"]) or d["stages"][1].update(sees=["prompt"]),
            "stages.0.sees: 'facts' reads ['answer']",
        ),
    ],
)
def test_distill_and_finetune_refuse_what_they_cannot_train(tmp_path, mutate, expected):
    """Distillation and fine-tuning run a list-ordered chain of generate/retrieve stages on the base model; any other
    graph is refused by name, before any data is read or model loaded."""
    import copy

    import yaml

    from fslm.config import check_chain, free_form_chain
    from fslm.distill import distill
    from fslm.finetune import finetune

    data = copy.deepcopy(GOOD)
    data["stages"][1].pop("template")
    mutate(data)
    cfg = load_stack_config(write(tmp_path, yaml.safe_dump(data)))
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_chain(cfg, "distillation")
    with pytest.raises(ConfigError, match="distillation"):
        distill(cfg, tmp_path / "missing.json", tmp_path / "out.jsonl")
    with pytest.raises(ConfigError, match="fine-tuning"):
        finetune(cfg, tmp_path / "missing.jsonl", tmp_path / "ft")
    check_chain(free_form_chain(load_stack_config(default_stack_path())), "distillation")  # the shipped chain passes


def test_distillation_trains_the_stages_that_answer_prompts_without_options():
    from fslm.config import free_form_chain

    cfg = load_stack_config(default_stack_path())
    chain = free_form_chain(cfg)
    assert [s.name for s in chain.stages] == ["facts", "reasoning", "answer"]
    assert all(s.when is None for s in chain.stages) and chain.source_path == cfg.source_path
    assert free_form_chain(chain) is chain  # nothing to drop: the same config
    reads_scorer = parse_stack_config(
        {
            "name": "x",
            "stages": [
                {"name": "pick", "score": {"format": "raw"}, "when": "has_options", "final": True},
                {"name": "note", "instruction": "Explain.", "sees": ["prompt", "pick"]},
                {"name": "answer", "instruction": "Answer.", "final": True},
            ],
        }
    )
    with pytest.raises(ConfigError, match=r"'note' reads \['pick'\], which run only on prompts with options"):
        free_form_chain(reads_scorer)
