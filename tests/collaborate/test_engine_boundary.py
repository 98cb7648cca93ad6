"""Code above `fslm/engine/` reaches a backend only through public, documented capabilities: decoders and training
that need the transformers model ask for `TransformersEngine`, and an engine without one is refused in one line."""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from fslm.collaborate.contrastive import contrastive_generate
from fslm.collaborate.proxy import Expert, proxy_generate
from fslm.collaborate.speculative import AssistedEngine
from fslm.config import parse_stack_config
from fslm.engine import Engine, EngineStats, GenerationParams, TransformersEngine, require_transformers
from fslm.engine.stepping import StepLogitsEngine
from fslm.errors import ConfigError, InputError

FSLM = Path(__file__).resolve().parents[2] / "fslm"
BACKENDS = ("fslm.engine.hf", "fslm.engine.llamacpp")  # modules, or packages with their submodules


class TextOnlyEngine:
    """An Engine with a tokenizer but no transformers model, as the llama.cpp engine is."""

    model_ref = "text-only"
    context_window = 512
    params = 1

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = [tokenizer.eos_token_id]
        self.stats = EngineStats()

    def add_adapter(self, name: str, path: str) -> None:
        raise NotImplementedError

    def adapters(self) -> list[str]:
        return []

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return messages[-1]["content"]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def generate(self, texts, params, adapter=None):
        raise NotImplementedError

    def score(self, contexts, continuations, adapter=None):
        raise NotImplementedError


@pytest.fixture(scope="module")
def text_only(tiny_engine) -> TextOnlyEngine:
    return TextOnlyEngine(tiny_engine.tokenizer)


def test_hf_engine_exposes_its_model(tiny_engine):
    assert isinstance(tiny_engine, TransformersEngine) and isinstance(tiny_engine, StepLogitsEngine)
    assert require_transformers(tiny_engine, "anything") is tiny_engine
    ids = tiny_engine.encode("What is the capital of France?")
    calls = tiny_engine.stats.calls
    import torch

    with tiny_engine.hf_model(None) as model, torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=tiny_engine.device)).logits
    assert logits.shape[-1] == tiny_engine.base_model.get_output_embeddings().weight.shape[0]
    assert tiny_engine.stats.calls == calls  # the caller counts its own forward passes


def test_hf_model_refuses_an_adapter_that_is_not_loaded(tiny_engine):
    with pytest.raises(ConfigError, match="not loaded"), tiny_engine.hf_model("nope"):
        pass


def test_an_engine_without_the_model_is_refused_in_one_line(text_only, tiny_engine):
    assert isinstance(text_only, Engine) and not isinstance(text_only, TransformersEngine)
    texts = ["What is the capital of France?"]
    cases = [
        lambda: AssistedEngine(text_only, prompt_lookup=3),
        lambda: AssistedEngine(tiny_engine, text_only, draft_tokens=2),
        lambda: contrastive_generate(text_only, tiny_engine, texts, GenerationParams(max_new_tokens=4)),
        lambda: contrastive_generate(tiny_engine, text_only, texts, GenerationParams(max_new_tokens=4)),
        lambda: proxy_generate(text_only, tiny_engine, tiny_engine, texts, GenerationParams(max_new_tokens=4)),
        lambda: proxy_generate(tiny_engine, Expert(text_only), tiny_engine, texts),  # type: ignore[arg-type]
    ]
    for case in cases:
        with pytest.raises(InputError, match="TextOnlyEngine engine .text-only. has none.*--engine hf") as err:
            case()
        assert "\n" not in str(err.value)


def test_finetune_refuses_an_engine_without_the_model(text_only, tiny_model_dir, tmp_path):
    from fslm.finetune.run import finetune_pairs

    cfg = parse_stack_config(
        {"name": "tiny", "base_model": str(tiny_model_dir), "stages": [{"name": "answer", "instruction": "Answer."}]}
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "a", "context": "Two plus two is", "continuation": " four"}) + "\n")
    with pytest.raises(InputError, match="LoRA fine-tuning runs on the transformers model.*--engine hf"):
        finetune_pairs(cfg, "answer", pairs, tmp_path / "out", engine=text_only)
    assert not (tmp_path / "out").exists()


def _private_names(module: Path) -> set[str]:
    """`_names` a backend defines on its engine objects (methods and `self._x` attributes), dunders excluded."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_nothing_above_the_engine_touches_backend_internals():
    """Outside fslm/engine/: no backend module imported (load_engine picks one) and no backend `_private` name used
    on another object, so a new backend only has to implement the protocols."""
    engine_dir = FSLM / "engine"
    backends = [engine_dir / "hf.py", *sorted((engine_dir / "llamacpp").glob("*.py"))]
    private = set().union(*(_private_names(path) for path in backends))
    assert "_active" in private  # the scan sees the names it guards
    found = []
    for path in sorted(FSLM.rglob("*.py")):
        if engine_dir in path.parents:
            continue
        where = path.relative_to(FSLM.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module is not None and any(module == b or module.startswith(b + ".") for b in BACKENDS):
                found.append(f"{where}:{node.lineno} imports {module}")
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{where}:{node.lineno} uses .{node.attr}")
    assert found == []
