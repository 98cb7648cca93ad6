"""Loading a resolved model with transformers: a checked folder, the one-time GGUF conversion (cached as
safetensors, so later loads take seconds instead of the ~20-60 s a GGUF load costs), or the hub."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fslm.errors import FslmError, ModelFileError, ModelNotFoundError
from fslm.models.checks import _guarded, check_model_folder
from fslm.models.gguf_header import check_gguf
from fslm.models.registry import DEFAULT_MODEL, ModelSource, _known_names_hint, resolve


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel
    tokenizer: object  # transformers PreTrainedTokenizerBase
    source: ModelSource

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())  # type: ignore[attr-defined]


def _write_safetensors_cache(model, tokenizer, target: Path) -> None:
    """Save a GGUF-loaded model as safetensors; transformers refuses, so drop the GGUF quantizer marks first.

    The GGUF weights were already dequantized on load, so the plain tensors ARE the model.
    """
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "fslm_source.json").write_text(json.dumps({"cached_from": "gguf"}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as err:  # a full disk or a read-only cache: the temp folder goes, the error says where
        raise FslmError(f"{target}: could not save the converted model ({err.strerror or err})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# The dtypes a model loads in, by every name fslm accepts, to torch's name: the CLI checks --dtype against these keys.
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ModelNotFoundError(f"unknown dtype {dtype!r}; expected float32, bfloat16 or float16")
    return getattr(torch, DTYPES[dtype])


def load_model(ref: str = DEFAULT_MODEL, *, dtype: str = "float32") -> LoadedModel:
    """The one function the rest of fslm calls to get a model and its tokenizer."""
    source = resolve(ref)
    torch_dtype = _torch_dtype(dtype)
    if source.kind in ("embedded", "gguf"):
        assert source.cache_dir is not None
        if source.cached:
            hint = f"; delete {source.cache_dir} to convert the GGUF again"
            model, tokenizer = _load_folder(source.cache_dir, torch_dtype, hint)
        else:
            model, tokenizer = _convert_gguf(source, torch_dtype)
    elif source.kind == "hf_dir":
        assert source.path is not None
        model, tokenizer = _load_folder(source.path, torch_dtype)
    else:
        model, tokenizer = _load_from_hub(ref, torch_dtype)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, source)


def load_tokenizer(ref: str):
    """Only the tokenizer of `ref`, without loading weights when it is on disk as a folder (a GGUF not yet
    converted is converted by `load_model`)."""
    source = resolve(ref)
    folder = source.cache_dir if source.cached else source.path if source.kind == "hf_dir" else None
    if folder is None:
        return load_model(ref).tokenizer
    from transformers import AutoTokenizer

    return _guarded(folder, lambda: AutoTokenizer.from_pretrained(folder))


def _load_folder(folder: Path, torch_dtype, hint: str = ""):
    """A checked Hugging Face folder (`check_model_folder`), loaded with safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        check_model_folder(folder)
        model = _guarded(
            folder, lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, use_safetensors=True)
        )
        tokenizer = _guarded(folder, lambda: AutoTokenizer.from_pretrained(folder))
    except ModelFileError as err:
        raise ModelFileError(f"{err}{hint}") from None
    return model, tokenizer


def _convert_gguf(source: ModelSource, torch_dtype):
    """The one-time GGUF load (dequantizing every tensor), saved as safetensors for every later load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert source.path is not None and source.cache_dir is not None
    gguf = source.path
    check_gguf(gguf)
    name = source.ref if source.kind == "embedded" else gguf.name
    with conversion_notice(f"converting {name} GGUF → safetensors (one time)…"):
        model = _guarded(
            gguf, lambda: AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
        )
        tokenizer = _guarded(gguf, lambda: AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))
        _write_safetensors_cache(model, tokenizer, source.cache_dir)
    return model.to(torch_dtype), tokenizer


def _load_from_hub(ref: str, torch_dtype):
    """Real hub loading for users who have one; here it fails fast with what was tried."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"], etag_timeout=10)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many unrelated types for "no network"
        raise ModelNotFoundError(
            f"offline: could not load {ref!r} from the Hugging Face hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            f"Tried: embedded names, a local folder or .gguf at {Path(ref).expanduser()}, the hub id {ref!r}. "
            + _known_names_hint()
        ) from None
    return model, tokenizer


# ---- one-time conversion notice --------------------------------------------------------------------------------------


@contextlib.contextmanager
def conversion_notice(message: str) -> Iterator[None]:
    """Say once, on stderr, that the slow one-time GGUF conversion is running, and hide transformers' own bars.

    A terminal gets a rich spinner with the elapsed time, then one "done" line; anything else (a log file, a pipe)
    gets the message as one plain line. When a rich live display is already running (a CLI spinner), it has
    replaced sys.stderr with a proxy: the message is written through it and shows above that spinner. The
    conversion's own output (transformers' tqdm bar, which its disable_progress_bar() does not reach, and warnings)
    is swallowed by pointing sys.stderr elsewhere for the duration; errors still arrive as exceptions."""
    from rich.file_proxy import FileProxy
    from transformers.utils import logging as hf_logging

    err = sys.stderr
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    started = time.monotonic()
    try:
        if err is None:  # pythonw: nowhere to say anything
            yield
        elif isinstance(err, FileProxy) or not err.isatty():
            err.write(message + "\n")
            err.flush()
            with contextlib.redirect_stderr(io.StringIO()):
                yield
        else:
            with _spinner(err, message), contextlib.redirect_stderr(io.StringIO()):
                yield
            err.write(f"{message.removesuffix('…')}: done in {time.monotonic() - started:.0f} s\n")
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _spinner(stream, message: str) -> Iterator[None]:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(file=stream),
        transient=True,
    )
    with progress:
        progress.add_task(message, total=None)
        yield
