"""The engine registry: built-ins without metadata, `fslm.engines` entry points, and `register_engine`."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import fslm.engine.registry as registry
from fslm.cli.common import check_engine
from fslm.config import parse_stack_config
from fslm.engine import (
    Engine,
    EngineStats,
    Generation,
    GenerationParams,
    Score,
    check_backend,
    engine_names,
    load_engine,
    register_engine,
)
from fslm.errors import ConfigError, FslmError, InputError

ROOT = Path(__file__).resolve().parents[2]


class EchoEngine:
    """A whole (if useless) engine: generates the prompt back, scores every continuation as certain."""

    context_window = 4096

    def __init__(self, model_ref: str, dtype: str = "float32", **options):
        self.model_ref, self.dtype, self.options = model_ref, dtype, options
        self.stats = EngineStats()
        self._adapters: list[str] = []

    @classmethod
    def from_ref(cls, model_ref: str, *, dtype: str = "float32", **options) -> EchoEngine:
        return cls(model_ref, dtype, **options)

    @property
    def params(self) -> int:
        return 0

    def add_adapter(self, name: str, path: str) -> None:
        self._adapters.append(name)

    def adapters(self) -> list[str]:
        return list(self._adapters)

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return "\n".join(m["content"] for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, texts: Sequence[str], params: GenerationParams, adapter: str | None = None) -> list[Generation]:
        self.stats.calls += 1
        return [Generation(t, self.count_tokens(t), self.count_tokens(t), 0.0, "stop") for t in texts]

    def score(self, contexts: Sequence[str], continuations: Sequence[str], adapter: str | None = None) -> list[Score]:
        return [Score(0.0, self.count_tokens(c), True, len(c)) for c in continuations]


def _installed(monkeypatch, *eps: tuple[str, str]) -> None:
    """Pretend the installed metadata declares exactly these `fslm.engines` entry points."""
    found = [EntryPoint(name, value, registry.GROUP) for name, value in eps]

    def entry_points(*, group: str):
        assert group == registry.GROUP
        return found

    monkeypatch.setattr(registry, "entry_points", entry_points)


@pytest.fixture(autouse=True)
def no_runtime_registrations(monkeypatch):
    monkeypatch.setattr(registry, "_registered", {})


def test_builtins_work_without_any_metadata(monkeypatch, tiny_model_dir):
    from fslm.engine.endpoint import EndpointEngine
    from fslm.engine.hf import HFEngine
    from fslm.engine.llamacpp import LlamaCppEngine

    _installed(monkeypatch)
    assert engine_names() == ("hf", "llamacpp", "openai", "vllm", "auto")
    assert registry.engine_factory("hf") == HFEngine.from_ref
    assert registry.engine_factory("llamacpp") == LlamaCppEngine.from_ref
    assert registry.engine_factory("openai") == EndpointEngine.from_ref
    assert isinstance(load_engine(str(tiny_model_dir), backend="hf"), HFEngine)
    with pytest.raises(InputError, match="unknown engine 'echo'; choose hf, llamacpp, openai, vllm, auto$"):
        load_engine(str(tiny_model_dir), backend="echo")


def test_an_entry_point_adds_an_engine_by_name(monkeypatch):
    _installed(monkeypatch, ("echo", f"{__name__}:EchoEngine.from_ref"))
    assert engine_names() == ("hf", "llamacpp", "openai", "vllm", "echo", "auto")
    assert check_backend("echo") == "echo"
    check_engine("echo")  # the CLI's --engine check
    engine = load_engine("some/model", dtype="bfloat16", backend="echo", batch_size=4)
    assert isinstance(engine, EchoEngine) and isinstance(engine, Engine)
    assert (engine.model_ref, engine.dtype, engine.options) == ("some/model", "bfloat16", {"batch_size": 4})
    assert engine.generate(["hello there"], GenerationParams())[0].text == "hello there"
    with pytest.raises(InputError, match="unknown engine 'vlm'; choose hf, llamacpp, openai, vllm, echo, auto"):
        check_backend("vlm")


def test_an_entry_point_overrides_a_builtin_and_auto_is_not_an_engine(monkeypatch):
    _installed(monkeypatch, ("hf", f"{__name__}:EchoEngine.from_ref"), ("auto", f"{__name__}:EchoEngine"))
    assert engine_names() == ("hf", "llamacpp", "openai", "vllm", "auto")
    assert isinstance(load_engine("m", backend="hf"), EchoEngine)
    with pytest.raises(InputError, match="unknown engine 'auto'"):
        registry.engine_factory("auto")  # a policy over llamacpp and hf, never a plugin's engine


def test_auto_falls_back_through_the_registry(monkeypatch):
    _installed(monkeypatch, ("hf", f"{__name__}:EchoEngine.from_ref"))

    def no_llamacpp(model_ref, **options):
        raise FslmError("llama.cpp is not installed")

    register_engine("llamacpp", no_llamacpp)
    engine = load_engine("m", backend="auto", batch_size=2, n_threads=3)
    assert isinstance(engine, EchoEngine) and engine.options == {"batch_size": 2}  # llama.cpp-only options dropped


def test_register_engine_wins_over_installed_ones_and_checks_its_arguments(monkeypatch):
    _installed(monkeypatch, ("echo", f"{__name__}:EchoEngine.from_ref"))
    made = []

    def factory(model_ref, **options):
        made.append(model_ref)
        return EchoEngine(model_ref, **options)

    register_engine("echo", factory)
    register_engine("mine-2", EchoEngine)
    assert engine_names() == ("hf", "llamacpp", "openai", "vllm", "echo", "mine-2", "auto")
    load_engine("m", backend="echo")
    assert made == ["m"] and isinstance(load_engine("n", backend="mine-2"), EchoEngine)
    for name in ("auto", "", "Upper", "has space", 7):
        with pytest.raises(InputError, match="engine name"):
            register_engine(name, EchoEngine)
    with pytest.raises(InputError, match="must be callable"):
        register_engine("x", "not a factory")


def test_a_broken_plugin_is_one_error_naming_it(monkeypatch):
    _installed(monkeypatch, ("gone", "fslm_no_such_plugin.engine:Engine"), ("typo", f"{__name__}:NoSuchEngine"))
    with pytest.raises(FslmError, match=r"engine 'gone' \(fslm_no_such_plugin.engine:Engine\) could not be loaded"):
        load_engine("m", backend="gone")
    with pytest.raises(FslmError, match=r"engine 'typo' .* could not be loaded: AttributeError"):
        load_engine("m", backend="typo")


def test_a_stack_file_can_name_a_plugin_engine(monkeypatch):
    stack = {"name": "s", "stages": [{"name": "answer", "instruction": "Answer."}]}
    _installed(monkeypatch)
    assert parse_stack_config({**stack, "engine": "llamacpp"}).engine == "llamacpp"
    with pytest.raises(ConfigError, match="engine: Input should be 'hf', 'llamacpp', 'openai', 'vllm' or 'auto'"):
        parse_stack_config({**stack, "engine": "echo"})
    _installed(monkeypatch, ("echo", f"{__name__}:EchoEngine.from_ref"))
    assert parse_stack_config({**stack, "engine": "echo"}).engine == "echo"
    with pytest.raises(
        ConfigError, match="engine: Input should be 'hf', 'llamacpp', 'openai', 'vllm', 'echo' or 'auto'"
    ):
        parse_stack_config({**stack, "engine": ["hf"]})


def test_pyproject_declares_the_builtins():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][registry.GROUP]
    assert declared == registry.BUILTIN
