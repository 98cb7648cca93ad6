"""Which engines `load_engine` can build, by name: the built-ins, installed plugins, and runtime registrations.

An engine is found, in rising precedence, among
1. the built-in factories (`BUILTIN`, "module:attribute" strings resolved only when chosen, so naming an engine
   never imports torch or llama.cpp); they are also declared as entry points, and this list keeps them working
   where the installed metadata predates those declarations (an editable install of an older checkout);
2. entry points in the group `fslm.engines` of any installed distribution: a plugin package adds an engine with
   `[project.entry-points."fslm.engines"] myengine = "my_pkg.engine:MyEngine.from_ref"` (docs/engine.md);
3. `register_engine(name, factory)` calls made at runtime (code that builds its own engine; tests).

A factory is called as `factory(model_ref, dtype=..., **options)` and returns an object implementing the Engine
protocol. "auto" is not an engine but a policy on top of two of them (llamacpp where it can run, else hf), so it
cannot be registered.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUP = "fslm.engines"
AUTO = "auto"
BUILTIN = {
    "hf": "fslm.engine.hf:HFEngine.from_ref",
    "llamacpp": "fslm.engine.llamacpp:LlamaCppEngine.from_ref",
    "openai": "fslm.engine.endpoint:EndpointEngine.from_ref",  # an OpenAI-compatible server (fslm/engine/endpoint.py)
    "vllm": "fslm.engine.vllm:VllmEngine.from_ref",  # vLLM's offline LLM, adapters as LoRARequests (own virtualenv)
}

EngineFactory = Callable[..., Any]  # (model_ref, *, dtype, **options) -> Engine

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")
_registered: dict[str, EngineFactory] = {}


def register_engine(name: str, factory: EngineFactory) -> None:
    """Make `factory` the engine called `name` for this process, over a built-in or plugin of the same name."""
    from fslm.errors import InputError

    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == AUTO:
        raise InputError(
            f"engine name {name!r}: use 1-40 lowercase letters, digits, '.', '_' or '-' (and not {AUTO!r}, "
            "the policy that picks llamacpp or hf)"
        )
    if not callable(factory):
        raise InputError(f"engine {name!r}: the factory must be callable, got {type(factory).__name__}")
    _registered[name] = factory


def _entry_points() -> dict[str, EntryPoint]:
    """Built-ins as entry points, overridden by the installed `fslm.engines` entry points."""
    found = {name: EntryPoint(name, value, GROUP) for name, value in BUILTIN.items()}
    found.update({ep.name: ep for ep in entry_points(group=GROUP) if ep.name != AUTO})
    return found


def engine_names() -> tuple[str, ...]:
    """Every name `load_engine` accepts: built-ins first, then plugins and registrations (sorted), then "auto"."""
    extra = sorted((set(_entry_points()) | set(_registered)) - set(BUILTIN))
    return (*BUILTIN, *extra, AUTO)


def engine_factory(name: str) -> EngineFactory:
    """The factory of engine `name` (not "auto"); InputError naming the known engines when there is none."""
    from fslm.errors import FslmError, InputError

    if name in _registered:
        return _registered[name]
    entry = _entry_points().get(name)
    if entry is None:
        raise InputError(f"unknown engine {name!r}; choose {', '.join(engine_names())}")
    try:
        factory = entry.load()
    except (ImportError, AttributeError) as err:  # a plugin not (or half) installed: say which one and why
        raise FslmError(f"engine {name!r} ({entry.value}) could not be loaded: {type(err).__name__}: {err}") from None
    if not callable(factory):
        raise FslmError(f"engine {name!r} ({entry.value}) is not callable but a {type(factory).__name__}")
    return factory
