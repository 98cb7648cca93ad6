"""The GGUF header walk: magic, version, metadata and tensor table read with every count and length bounded by the
file's size, and every tensor's data checked to lie inside the file, before a converter or llama.cpp reads it."""

from __future__ import annotations

import mmap
import re
import struct
from pathlib import Path

from fslm.errors import ModelFileError

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
