"""What every verb shares: user errors become a clean message and exit code 2, and one rich console."""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from fslm.errors import FslmError

console = Console(stderr=True)
out = Console()


# Libraries whose deprecation notices are for fslm's developers, not for a person running a command.
_LIBRARIES = r"(transformers|torch|peft|accelerate|huggingface_hub|tokenizers|gguf|sentence_transformers|lm_eval)"


def quiet_libraries() -> None:
    """Keep transformers/HF progress chatter and library deprecation notices out of user output.

    Only the CLI calls this: Python users of fslm see every warning as usual. `python -W ...` or PYTHONWARNINGS
    still wins (then nothing is filtered). Environment defaults reach transformers when a verb imports it later, so
    light verbs (`fslm models`) never pay for importing it here; if it is already imported (tests, notebooks) it is
    told directly.
    """
    if not sys.warnoptions:
        for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=_LIBRARIES)
        # transformers warns about its own deprecated arguments from the caller's frame (fslm's engine)
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*(deprecated|will be removed).*")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn FslmError into `error: ...` on stderr and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except FslmError as err:
            console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


@contextmanager
def status(message: str, enabled: bool = True) -> Iterator[None]:
    if enabled and sys.stderr.isatty():
        with console.status(message):
            yield
    else:
        if enabled:
            console.print(message, style="dim")
        yield


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
