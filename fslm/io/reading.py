"""Reading files a user hands to fslm: bounded in size, decoded strictly, parsed without surprises.

Every loader (stack YAML, instruction data, distilled records, pairs, benchmark files, caches, model configs) reads
through these helpers, so a bad file always ends in ONE FslmError naming the file and, where there are lines, the
line, never a UnicodeDecodeError, RecursionError or MemoryError traceback:

* `read_bytes` refuses non-regular files (a FIFO would block forever, /dev/zero never ends) and files above a cap,
  before reading more than the cap; a `.gz` file is decompressed, the cap bounding what it expands to (a gzip bomb
  is a few KiB standing for gigabytes);
* `decode_text` decodes strict UTF-8 (a leading BOM is dropped) and names the line and column of a bad byte;
* `loads_json` turns every way `json.loads` can fail (bad syntax, nesting past the recursion limit, an integer of
  more than 4300 digits) into `JsonError`, and refuses values nested deeper than MAX_JSON_DEPTH and lone
  surrogates (`"\\ud800"`): JSON can spell them, Python keeps them, and they crash tokenizers and UTF-8 file
  writes far from the file that carried them;
* `iter_jsonl` / `read_jsonl` read JSONL through the above, an unparsable line naming file and line;
* `load_yaml` parses with `StrictYamlLoader`, a SafeLoader that caps what anchors and aliases expand to (the
  "billion laughs" alias bomb is a few hundred bytes standing for 9**9 values) and how deep values nest.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from fslm.errors import DataError, FslmError

MAX_DATA_BYTES = 512 << 20  # one data file (instruction data, distilled records, benchmark files, caches)
MAX_YAML_DEPTH = 32  # a stack file nests 4 levels deep; anything far deeper is not a stack
MAX_YAML_NODES = 100_000  # values (a long string counts once per 64 characters) with aliases expanded
MAX_JSON_DEPTH = 100  # fslm's records nest 3-4 levels; this leaves room and keeps repr()/json.dumps of them safe

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # only a text with such an escape can decode to a surrogate


def printable(text: str) -> str:
    """`text` safe to print or encode as UTF-8: lone surrogates become `\\udXXX` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


def read_bytes(path: str | Path, *, limit: int = MAX_DATA_BYTES, error: type[FslmError] = DataError) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is `error` naming the file.

    Opened non-blocking so that a FIFO passed by mistake is refused instead of waiting for a writer; read in
    chunks, since read(limit + 1) would reserve the whole cap up front for every small file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or err})") from None
    chunks, size = [], 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{path}: not a regular file")
        while size <= limit and (chunk := os.read(fd, min(1 << 24, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or err})") from None
    finally:
        os.close(fd)
    if size > limit:
        raise error(f"{path}: larger than {_size(limit)}, the most fslm reads from a file like this; split it")
    raw = b"".join(chunks)
    return gunzip(path, raw, limit=limit, error=error) if str(path).endswith(".gz") else raw


def gunzip(path: str | Path, raw: bytes, *, limit: int = MAX_DATA_BYTES, error: type[FslmError] = DataError) -> bytes:
    """The decompressed bytes of a gzip file's contents, refused once they pass `limit` (read in bounded steps, so a
    bomb costs at most `limit` bytes of memory); a damaged or truncated file is `error` naming it."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
            data = fh.read(limit + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise error(f"{path}: not a complete gzip file ({err}); recompress it or restore it") from None
    if len(data) > limit:
        raise error(f"{path}: decompresses to more than {_size(limit)}, the most fslm reads from a file like this")
    return data


def decode_text(path: str | Path, raw: bytes, *, error: type[FslmError] = DataError) -> str:
    """Strict UTF-8 (a leading BOM dropped); a bad byte is `error` naming its line and column."""
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise error(
            f"{path}: line {line}, column {column}: not UTF-8 text (byte 0x{raw[err.start]:02x}: {err.reason}); "
            "re-save the file as UTF-8"
        ) from None


def read_text(path: str | Path, *, limit: int = MAX_DATA_BYTES, error: type[FslmError] = DataError) -> str:
    """`read_bytes` then `decode_text`."""
    return decode_text(path, read_bytes(path, limit=limit, error=error), error=error)


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based number, line) of every non-blank line, split on "\\n" only (a "\\r" before it dropped).

    str.splitlines would also split on U+2028, U+0085 and other characters that `json.dumps(ensure_ascii=False)`
    writes raw inside strings, cutting a valid JSONL record in two."""
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, line.removesuffix("\r")


class JsonError(ValueError):
    """Why a JSON text was refused, without file or line: the caller knows those and adds them."""


def loads_json(text: str, **kwargs: Any) -> Any:
    """`json.loads`, but every failure is a JsonError (see `_checked`)."""
    return _checked(text, lambda: json.loads(text, **kwargs), walk=_may_need_walk(text))


def read_json_object(
    path: str | Path, *, limit: int = MAX_DATA_BYTES, error: type[FslmError] = DataError
) -> dict[str, Any]:
    """A file holding one JSON object (a run's summary, a saved calibration, a config); a truncated or garbled file,
    or any other JSON value, is `error` naming the file (and the line and column of bad syntax)."""
    text = read_text(path, limit=limit, error=error)
    try:
        data = loads_json(text)
    except JsonError as err:
        raise error(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


BAD_JSONL_LINE = "{path}:{line}: not valid JSON ({problem})"


def iter_jsonl(
    path: str | Path,
    *,
    text: str | None = None,
    bad_line: str = BAD_JSONL_LINE,
    limit: int = MAX_DATA_BYTES,
    error: type[FslmError] = DataError,
) -> Iterator[tuple[int, Any]]:
    """(1-based line number, value) of each non-blank line of a JSONL file, read with `read_text` (bounded, strict
    UTF-8) and parsed with `loads_json`. A line that is not JSON is `error(bad_line)`, formatted with the file
    (`path`), the line number (`line`) and why (`problem`), so each caller keeps its own wording. `text`: the
    file's contents when the caller has read them already (a resumable store parses only its complete lines)."""
    if text is None:
        text = read_text(path, limit=limit, error=error)
    for number, line in lines(text):
        try:
            value = loads_json(line)
        except JsonError as err:
            raise error(bad_line.format(path=path, line=number, problem=err)) from None
        yield number, value


def read_jsonl(path: str | Path, **options: Any) -> list[Any]:
    """Every value of a JSONL file, in order (`iter_jsonl` without the line numbers)."""
    return [value for _, value in iter_jsonl(path, **options)]


def decode_json_at(decoder: json.JSONDecoder, text: str, pos: int) -> tuple[Any, int]:
    """`decoder.raw_decode(text, pos)` (one value of a larger document), failing like `loads_json`. The value is
    always walked: scanning the whole document for escapes once per value would be quadratic."""
    value, end = _checked(text, lambda: decoder.raw_decode(text, pos), walk=False)
    problem = value_problem(value)
    if problem is not None:
        raise JsonError(problem)
    return value, end


def _checked(text: str, parse: Callable[[], Any], *, walk: bool) -> Any:
    """Run a JSON parse; syntax errors, nesting past the recursion limit and integers of more than 4300 digits
    become JsonError, and so does a value nested deeper than MAX_JSON_DEPTH or holding a lone surrogate."""
    try:
        result = parse()
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}" if "\n" in text.strip() else f"column {err.colno}"
        raise JsonError(f"{err.msg} at {where}") from None
    except RecursionError:
        raise JsonError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as err:  # int() of a number with more than sys.get_int_max_str_digits() digits
        raise JsonError(f"unreadable number ({str(err).split(':')[0]})") from None
    problem = value_problem(result) if walk else None
    if problem is not None:
        raise JsonError(problem)
    return result


def _may_need_walk(text: str) -> bool:
    """Cheap test first: only text with a surrogate escape, or with enough brackets to nest deep, needs a walk."""
    return bool(_SURROGATE_ESCAPE.search(text)) or text.count("[") + text.count("{") > MAX_JSON_DEPTH


def value_problem(value: Any) -> str | None:
    """Why a parsed JSON/YAML value is unfit for fslm, or None: nesting deeper than MAX_JSON_DEPTH (later repr()
    or json.dumps of it could overflow), or a string holding a lone surrogate, named by its field path (e.g.
    "field 'targets.answer'"). Iterative, so it cannot overflow the stack itself."""
    todo: list[tuple[str, Any, int]] = [("", value, 0)]
    seen: set[int] = set()  # YAML aliases share objects: each is checked once
    while todo:
        where, item, depth = todo.pop()
        if depth > MAX_JSON_DEPTH:
            return f"nested more than {MAX_JSON_DEPTH} levels deep"
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return f"{_field(where)} holds a lone surrogate (\\ud800-\\udfff), which is not text"
        elif isinstance(item, dict):
            for key, sub in reversed(list(item.items())):
                name = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and _SURROGATE.search(key):
                    return f"the name of {_field(name)} holds a lone surrogate (\\ud800-\\udfff), which is not text"
                todo.append((name, sub, depth + 1))
        elif isinstance(item, (list, tuple)):
            todo.extend((f"{where}[{i}]", sub, depth + 1) for i, sub in reversed(list(enumerate(item))))
    return None


def _field(where: str, limit: int = 100) -> str:
    """A field path as messages show it; a key can be as long as the file, so it is cut."""
    if not where:
        return "the value"
    where = printable(where)
    return f"field {where if len(where) <= limit else where[: limit - 3] + '...'!r}"


def replace_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, for text from outside (a teacher's HTTP reply) that must
    be stored and tokenized, not refused."""
    return _SURROGATE.sub("\ufffd", text)


class StrictYamlLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no Python objects) that also bounds what anchors and aliases can expand to, and nesting.

    Aliases are counted, not refused: yaml.safe_dump itself writes `&id001` / `*id001` when one Python object
    appears twice in what it dumps (a stack written by code often shares a list), so refusing them would refuse
    fslm's own files. What is bounded is the document with every alias expanded: at most MAX_YAML_NODES values (a
    long string counting once per 64 characters) and MAX_YAML_DEPTH levels. An alias bomb ("billion laughs": nine
    levels of nine aliases each) is a few hundred bytes standing for 9**9 values; PyYAML shares the aliased
    objects, but whatever walks them (validation, error messages, dumping) does not. An alias inside the value it
    names (a recursive structure) is refused outright. A value that YAML accepts but Python cannot build (the date
    2001-02-30, an integer of 5000 digits) becomes a YAML error at its line instead of a ValueError traceback."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0  # nesting while composing: deep text fails here, before Python's recursion limit
        self._shape: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels) with aliases expanded

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # the anchored node (an unknown alias is a ComposerError)
            if id(node) not in self._shape:
                raise self._refuse(f"alias *{event.anchor} is inside the value it names (recursive)", event)
            return node
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise self._refuse(f"nested more than {MAX_YAML_DEPTH} levels deep", event)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        children = [self._shape[id(child)] for child in _children(node)]
        size = (1 + len(node.value) // 64 if isinstance(node, yaml.ScalarNode) else 1) + sum(s for s, _ in children)
        levels = 1 + max((h for _, h in children), default=0)
        if size > MAX_YAML_NODES:
            raise self._refuse(f"expands to more than {MAX_YAML_NODES:,} values through anchors and aliases", event)
        if levels > MAX_YAML_DEPTH:
            raise self._refuse(f"nested more than {MAX_YAML_DEPTH} levels deep through anchors and aliases", event)
        self._shape[id(node)] = (size, levels)
        return node

    @staticmethod
    def _refuse(problem: str, event: yaml.Event) -> yaml.composer.ComposerError:
        return yaml.composer.ComposerError(None, None, problem, event.start_mark)

    def construct_object(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as err:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({str(err).split(':')[0]})", node.start_mark
            ) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def load_yaml(text: str, where: str, *, error: type[FslmError]) -> Any:
    """Parse one YAML document with StrictYamlLoader; any problem is `error` naming `where`, line and column."""
    try:
        loader = StrictYamlLoader(text)  # the reader checks for unprintable characters here already
        try:
            value = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise error(f"{where}:{_yaml_position(err)} malformed YAML: {_yaml_problem(err)}") from None
    problem = value_problem(value)
    if problem is not None:
        raise error(f"{where}: {problem}")
    return value


def _yaml_position(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return f" line {mark.line + 1}, column {mark.column + 1}:"
    if isinstance(err, yaml.reader.ReaderError):
        return f" character {err.position + 1}:"
    return ""


def _yaml_problem(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.reader.ReaderError):
        return f"{err.reason} (#x{err.character:04x})"
    return printable(str(getattr(err, "problem", None) or err))
