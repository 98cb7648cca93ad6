"""Makes `lm_eval --model fslm` work: registers fslm the moment lm-eval's model registry is imported.

lm-eval (0.4.10 to at least 0.4.13) reads no `lm_eval.models` entry point, so its CLI cannot find a model that a
plugin package declares. `fslm-lm-eval.pth`, installed beside this module in site-packages, imports it at interpreter
start. It costs one meta-path finder that does nothing until `lm_eval.api.registry` is imported; then the registry
loads as usual and "fslm" is added as a lazy placeholder (lm-eval's own mechanism for its built-in models), so fslm
itself is imported only when `--model fslm` is asked for. Any failure here is swallowed: a registration must never
break lm-eval, nor Python's start-up.
"""

from __future__ import annotations

import importlib.abc
import sys

REGISTRY_MODULE = "lm_eval.api.registry"
NAME = "fslm"
PLACEHOLDER = "fslm.lm_eval_plugin:FslmLM"


def register(registry_module) -> None:
    registry = getattr(registry_module, "model_registry", None)
    try:
        if registry is not None and NAME not in registry:
            registry.register(NAME, target=PLACEHOLDER)
    except Exception:  # an lm-eval without placeholders: `python -m fslm.lm_eval_plugin` still works
        pass


class _RegisteringLoader(importlib.abc.Loader):
    """The registry's own loader, plus one registration after the module has run."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        register(module)

    def __getattr__(self, name):  # get_source, get_code, is_package, ...: the inner loader's
        return getattr(self._inner, name)


class RegistryHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != REGISTRY_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    if REGISTRY_MODULE in sys.modules:  # imported before us (unusual): register directly
        register(sys.modules[REGISTRY_MODULE])
    elif not any(isinstance(f, RegistryHook) for f in sys.meta_path):
        sys.meta_path.insert(0, RegistryHook())


try:
    install()
except Exception:
    pass
