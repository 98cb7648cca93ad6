"""Shared by the loader fuzz tests: hypothesis settings, input strategies, and the one property every loader keeps.

The property (`loads_or_fails_cleanly`): a loader given any file either returns, or raises the expected FslmError
subclass whose message names the file, is short and can be printed as UTF-8; any other exception fails the test.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fslm.errors import FslmError

# Fast enough for the whole fuzz suite to stay well under a minute; no example database in the work tree.
# Derandomized: CI sees the same 120 inputs per test every run (a red CI is then a code change, not luck). For a
# deeper hunt: FSLM_FUZZ_EXAMPLES=3000 python -m pytest tests -k fuzz (random inputs, a new seed each run).
_DEEP = int(os.environ.get("FSLM_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_DEEP or 120,
    derandomize=not _DEEP,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Byte strings that have broken loaders before, or plausibly could: bad UTF-8, JSON escapes of lone surrogates,
# line separators str.splitlines splits on, deep nesting, a number past int()'s digit limit, a BOM, NUL.
NASTY = [
    b"\\ud800",
    b"\\udfff",
    b'"\\ud83d"',
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\x00",
    b"\xe2\x80\xa8",
    b"\xc2\x85",
    b"\x0c",
    b"\r",
    b"\n",
    b"[" * 3000,
    b"{" * 5,
    b"}",
    b"]",
    b"9" * 5000,
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"\xef\xbb\xbf",
    b'"',
    b",",
    b":",
    b"true",
    b"null",
    b"\t",
    b"  ",
]

# Pieces of JSON text: random sequences of them reach parser corners (nesting past the recursion limit at a value
# position, a 5000-digit number, escapes of lone surrogates) far more often than random bytes do.
JSON_TOKENS = [b"{", b"}", b"[", b"]", b":", b",", b'"a"', b'"id"', b'"\\ud800"', b'"x\\udc00"', b"1", b"-0.5"]
JSON_TOKENS += [b"true", b"null", b"NaN", b"9" * 5000, b"[" * 3000, b'{"a":' * 1500, b"\n", b" ", b'"\xe2\x80\xa8"']
json_ish = st.lists(st.sampled_from(JSON_TOKENS), max_size=12).map(b"".join)

# Strings: the ones that have broken loaders (a lone surrogate, Unicode line separators, blanks) half the time, any
# text (lone surrogates included, though hypothesis draws them rarely) the other half.
NASTY_STRINGS = ["\ud800", "a\udfffb", "x\u2028y", "\x85", "", " ", "\r\n", "[x]", "#### 4", "{prompt}"]
texts = st.sampled_from(NASTY_STRINGS) | st.text(st.characters(exclude_categories=()), max_size=12)
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple = ()):
    """Every key/index path into a parsed JSON/YAML value, so an edit can hit any field at any depth."""
    yield prefix
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield from _paths(sub, (*prefix, i))


@st.composite
def broken(draw: st.DrawFn, valid: Any) -> Any:
    """A deep copy of `valid` (parsed JSON/YAML) with one to three fields replaced by any JSON value (often a
    string), removed, or joined by an unknown field: inputs one mistake away from loading."""
    data = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        where = list(_paths(data))[1:]
        if not where:
            return draw(json_values)
        path = draw(st.sampled_from(where))
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["replace", "replace", "delete", "extra"]))
        if op == "replace":
            parent[path[-1]] = draw(texts | texts | json_values)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(json_values)
    return data


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` with one to four edits: a byte changed, NASTY or random bytes inserted, a run deleted, a cut."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(NASTY) | st.binary(max_size=6))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def dumps_line(value: Any) -> bytes:
    """One JSONL line as fslm's writers make it (raw UTF-8; a lone surrogate stays an escape)."""
    text = json.dumps(value, ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace") + b"\n"


def loads_or_fails_cleanly(load: Callable[[], Any], path: Path, errors: type[FslmError] | tuple = FslmError) -> Any:
    """load(), or None when it raised `errors` naming `path`; any other exception propagates and fails the test."""
    try:
        return load()
    except errors as err:
        message = str(err)
        assert str(path) in message, f"error does not name {path}: {message}"
        message.encode("utf-8")  # printable: no lone surrogate reaches the terminal
        assert len(message) < 5000, f"error message of {len(message)} characters"  # bad input is not echoed whole
        return None
