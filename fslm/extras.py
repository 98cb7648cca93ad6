"""Optional parts of fslm and the packages each needs: a missing one is named with its install command.

The core (`fslm run`, `models`, `stack`, `generate`, `distill`, `finetune`) needs only pyproject's `dependencies`; each
extra below is a `pip install 'fslm[NAME]'` away. Checked with `find_spec`, which imports nothing, before work starts.
"""

from __future__ import annotations

from importlib.util import find_spec

from fslm.errors import FslmError

# extra -> the import names of its packages (pyproject's `[project.optional-dependencies]` lists the same packages)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "prometheus_client"),
    "eval": ("lm_eval", "matplotlib"),
    "retrieve": ("bm25s", "Stemmer"),
    "collaborate": ("sentence_transformers", "sklearn", "matplotlib"),
    "fast": ("llama_cpp",),
    "ray": ("ray",),  # `--ray` on `fslm distill` and `fslm eval`
}


class MissingExtraError(FslmError):
    """A feature whose optional packages are not installed."""


def _installed(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or blocked package counts as absent
        return False


def missing(extra: str) -> list[str]:
    """The import names of `extra` that cannot be found in this environment."""
    return [name for name in EXTRAS[extra] if not _installed(name)]


def require(extra: str, feature: str) -> None:
    """Raise MissingExtraError naming `feature`, the missing packages and the install command."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(
            f"{feature} needs fslm's '{extra}' extra (missing: {', '.join(absent)}): pip install 'fslm[{extra}]'"
        )
