"""What every verb shares: user errors become a clean message and exit code 2, and one rich console.

The `check_*` functions look at what a person typed before a verb loads a model (seconds to a minute): each one
needs no torch or transformers, and raises an FslmError that `guarded` prints as one `error:` line.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import typer.models
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from typer.core import TyperGroup

from fslm.errors import FslmError, InputError

if TYPE_CHECKING:
    from fslm.config import StackConfig

console = Console(stderr=True)
out = Console()


# Libraries whose deprecation notices are for fslm's developers, not for a person running a command.
_LIBRARIES = r"(transformers|torch|peft|accelerate|huggingface_hub|tokenizers|gguf|sentence_transformers|lm_eval)"


class RunByDefault(TyperGroup):
    """A command group whose `run` is the default: `fslm cascade PROMPT ...` means `fslm cascade run PROMPT ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def default_of(owner: Any, name: str) -> Any:
    """The default the library gives `name` (a dataclass field, a pydantic model field or a function parameter), so a
    CLI option's default lives once, where the library defines it. A name the owner lacks fails when the CLI module is
    imported: a renamed field breaks every test, not a user's run."""
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(owner):
        for f in dataclasses.fields(owner):
            if f.name == name and f.default is not dataclasses.MISSING:
                return f.default
            if f.name == name and f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    elif isinstance(owner, type) and hasattr(owner, "model_fields"):
        field = owner.model_fields.get(name)
        if field is not None and not field.is_required():
            return field.get_default(call_default_factory=True)
    elif callable(owner):
        param = inspect.signature(owner).parameters.get(name)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    raise TypeError(f"{getattr(owner, '__qualname__', owner)} has no default for {name!r}")


def quiet_libraries() -> None:
    """Keep transformers/HF progress chatter and library deprecation notices out of user output.

    Only the CLI calls this: Python users of fslm see every warning as usual. `python -W ...` or PYTHONWARNINGS
    (e.g. PYTHONWARNINGS=default fslm run ...) still wins: then nothing is filtered. Environment defaults reach
    transformers when a verb imports it later, so light verbs (`fslm models`) never pay for importing it here; if it
    is already imported (tests, notebooks) it is told directly.
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


def print_error(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn FslmError into `error: ...` on stderr and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_libraries()
        _tolerant_stdout()
        try:
            return fn(*args, **kwargs)
        except FslmError as err:
            print_error(str(err))
            raise typer.Exit(2) from None
        except UnicodeEncodeError as err:
            message = _undecodable_argument(err, fn, kwargs)
            if message is None:  # not text the user typed: a bug, shown as one
                raise
            print_error(message)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def usage_error(err: Any) -> None:
    """A bad flag value, a missing argument, an unknown option or verb: one `error:` line and exit 2."""
    where = err.ctx.command_path if err.ctx is not None else "fslm"
    print_error(f"{err.format_message().rstrip('.')}; see `{where} --help`")
    raise typer.Exit(2)


def _tolerant_stdout() -> None:
    """Print what a shell passed in as undecodable bytes (file names, mostly) as \\udcff escapes, not a traceback:
    stderr does this by default, stdout only in a C/POSIX locale."""
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")


def _undecodable_argument(err: UnicodeEncodeError, fn: Callable[..., Any], kwargs: dict[str, Any]) -> str | None:
    """When the text that could not be encoded holds lone surrogates (a shell's undecodable bytes) that came from
    one of the command's arguments, say which; None when they did not come from the user."""
    bad = err.object[err.start : err.end] if isinstance(err.object, str) else ""
    if not bad or _surrogate(bad) is None:
        return None
    for name, value in kwargs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(bad in str(v) for v in values if isinstance(v, (str, Path))):
            shown = bad.encode("utf-8", "backslashreplace").decode()
            return (
                f"{_flag(fn, name)}: {shown} (an undecodable byte from the shell) cannot be written as text; use UTF-8"
            )
    return None


def _flag(fn: Callable[..., Any], name: str) -> str:
    """How a parameter of a verb function is spelled on the command line: --stack, or PROMPT for an argument."""
    default = inspect.signature(fn).parameters[name].default
    if isinstance(default, typer.models.ArgumentInfo):
        return name.upper()
    long = [d for d in getattr(default, "param_decls", None) or () if d.startswith("--")]
    return long[0] if long else "--" + name.replace("_", "-")


def _surrogate(text: str) -> int | None:
    """Index of the first lone surrogate: how Python hands over bytes from argv that are not valid UTF-8."""
    return next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)


def check_text(text: str, what: str, *, blank: bool = False) -> str:
    """Text a model or an index will read (a query, a stop string): not empty (nor blank, unless `blank`), and
    valid Unicode, which no tokenizer or UTF-8 writer would accept otherwise."""
    if not (text if blank else text.strip()):
        raise InputError(f"{what} is empty")
    i = _surrogate(text)
    if i is not None:
        raise InputError(
            f"{what} is not valid text: character {i + 1} is an undecodable byte or lone surrogate "
            f"({text[i].encode('utf-8', 'backslashreplace').decode()}); pass UTF-8 text"
        )
    return text


def check_model(ref: str, what: str) -> None:
    """The model reference names something on this machine (or the hub); nothing is loaded."""
    from fslm.models import resolve

    try:
        resolve(ref)
    except FslmError as err:
        raise type(err)(f"{what}: {err}") from None


def check_expert_delta(expert_delta: str, delta_alpha: float) -> None:
    """--expert-delta TUNED:BASE and --delta-alpha: the form, the alpha, each model and adapter folder; no load."""
    from fslm.collaborate.proxy_params import ProxyTuneParams, check_adapter_dirs, parse_expert_delta

    ProxyTuneParams(alpha=delta_alpha)
    for ref, role in zip(parse_expert_delta(expert_delta), ("TUNED", "BASE"), strict=True):
        check_model(ref.model, f"--expert-delta {role}")
    check_adapter_dirs(expert_delta)


def check_dtype(dtype: str, what: str = "--dtype") -> None:
    from fslm.models import DTYPES  # the names load_model accepts (fslm.models imports torch only when loading)

    if dtype not in DTYPES:
        raise InputError(f"{what} {dtype!r}: expected float32 or bfloat16 (or float16)")


ENGINE_HELP = (
    "Inference engine: hf (transformers + PEFT, the reference), llamacpp (llama.cpp, fslm[fast]), openai (a server "
    "at $OPENAI_BASE_URL) or auto."
)


def engine_option(default: str | None = None, help: str = ENGINE_HELP) -> Any:
    """The one `--engine` option every model-running verb takes."""
    return typer.Option(default, "--engine", "-e", help=help, show_default=default is not None)


def ray_options() -> tuple[Any, Any]:
    """`--ray ADDRESS` and `--ray-actors N`, taken by the verbs that fan batches out (docs/scale.md)."""
    return (
        typer.Option(
            None,
            "--ray",
            help="Fan batches out over a Ray cluster: its head's HOST:PORT, or auto (this machine's, or a new local one).",
        ),
        typer.Option(None, "--ray-actors", min=1, help="With --ray: worker actors (default: one per cluster CPU)."),
    )


def check_ray(address: str | None, actors: int | None) -> None:
    """Join the Ray cluster now, so an address nothing answers at fails before any model loads."""
    if address is None:
        if actors is not None:
            raise InputError("--ray-actors goes with --ray ADDRESS")
        return
    from fslm.scale.ray import connect

    connect(address)


def check_engine(backend: str | None) -> None:
    """A known backend, and its runtime installed (llamacpp: the `fast` extra); "auto" falls back by itself."""
    if backend is None:
        return
    from fslm.engine import check_backend
    from fslm.extras import require

    check_backend(backend)
    if backend == "llamacpp":
        require("fast", "--engine llamacpp")


def check_stack(path: Path | str | None, *, adapters: bool = True, engine: str | None = None) -> StackConfig:
    """A stack file (the packaged default when None) as far as it can be checked without its model: schema,
    adapter and index folders (unless `adapters` is off), and a base model that resolves (unless the stack, or the
    `engine` a command names, runs it on a server)."""
    from fslm.config import load_default_stack_config, load_stack_config
    from fslm.stack_checks import check_adapters

    cfg = load_default_stack_config() if path is None else load_stack_config(path)
    if not adapters:
        cfg = cfg.without_adapters()
    check_adapters(cfg)
    if cfg.endpoint is None and (engine or cfg.engine) != "openai":  # else the base model is a name a server serves
        check_model(cfg.base_model, f"{cfg.source_path or 'stack'}: base_model")
    return cfg


def check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise InputError(f"{path}: {what} not found" + (" (it is a folder)" if path.is_dir() else ""))


def check_output(path: Path, what: str, *, folder: bool) -> None:
    """`path` (a file or, with `folder`, a folder a verb creates or fills) can be written; checked up front, so a
    typo costs nothing rather than a finished run that cannot be saved. Nothing is created here."""
    if _surrogate(str(path)) is not None:
        raise InputError(f"{what} {path}: the name has undecodable bytes; use a UTF-8 name")
    try:
        _check_writable(path, what, folder)
    except OSError as err:  # e.g. a folder on the way that may not be looked into
        raise InputError(f"{what} {path}: {err.strerror or err}") from None


def _check_writable(path: Path, what: str, folder: bool) -> None:
    if path.exists():
        if path.is_dir() != folder:
            raise InputError(
                f"{what} {path}: is a {'file' if folder else 'folder'}, not a {'folder' if folder else 'file'}"
            )
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            raise InputError(f"{what} {path}: no permission to write it")
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: no permission to write in {parent}")


class LazyProgress(Progress):
    """A rich progress bar that appears at its first update, so an error found before any work prints alone."""

    def __enter__(self) -> LazyProgress:
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.start()  # once: a started display ignores it
        super().update(*args, **kwargs)

    def stop(self) -> None:
        if self.live.is_started:
            super().stop()


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
