"""Serve fixtures: a 3-stage stack on the tiny model, a gate to hold the batch worker (uvicorn: tests/live_server.py)."""

from __future__ import annotations

import threading
import time

import pytest

from fslm.config import parse_stack_config
from fslm.stack import Stack

TINY_STACK = {
    "name": "tiny",
    "base_model": "tiny",
    "max_prompt_tokens": 128,
    "stages": [
        {
            "name": "intent",
            "label": "Intent",
            "instruction": "Restate.",
            "sees": ["prompt"],
            "generation": {"max_new_tokens": 6},
        },
        {"name": "facts", "instruction": "Facts.", "sees": ["prompt", "intent"], "generation": {"max_new_tokens": 6}},
        {"name": "answer", "instruction": "Answer.", "sees": ["prompt", "facts"], "generation": {"max_new_tokens": 8}},
    ],
}


class GatedEngine:
    """Wraps an engine: records every generate()/generate_mixed() batch size and can hold the worker until the test opens the gate."""

    def __init__(self, engine):
        self._engine = engine
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, texts, params, adapter=None):
        self.batch_sizes.append(len(texts))
        self.entered.set()
        assert self.gate.wait(30), "test gate never opened"
        return self._engine.generate(texts, params, adapter=adapter)

    def generate_mixed(self, rows):
        self.batch_sizes.append(len(rows))
        self.entered.set()
        assert self.gate.wait(30), "test gate never opened"
        return self._engine.generate_mixed(rows)


@pytest.fixture()
def tiny_stack(tiny_engine) -> Stack:
    return Stack(parse_stack_config(TINY_STACK), tiny_engine)


@pytest.fixture()
def gated_stack(tiny_engine) -> Stack:
    return Stack(parse_stack_config(TINY_STACK), GatedEngine(tiny_engine))


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch, tmp_path):
    """Tests decide the API key and trace persistence themselves, whatever the developer's environment says."""
    from fslm.settings import reset_settings

    monkeypatch.delenv("FSLM_API_KEY", raising=False)
    monkeypatch.delenv("FSLM_LOG_TRACES", raising=False)
    monkeypatch.delenv("FSLM_LOG_DB", raising=False)
    monkeypatch.setenv("FSLM_LOG", "1")  # the server's default: every request goes to the run log (here in tmp_path)
    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))
    reset_settings()
    yield
    reset_settings()


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
