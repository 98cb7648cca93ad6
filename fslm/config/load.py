"""Reading a stack file: size and encoding limits, YAML, validation, and errors that name the file and field path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from fslm.config.stack import StackConfig, _short
from fslm.errors import ConfigError
from fslm.io import load_yaml, read_text
from fslm.stages.kinds_config import WHEN_TAGS

MAX_STACK_BYTES = 1 << 20  # a real stack file is a few KiB; checked before parsing
MAX_PROBLEMS = 20  # a list of 10k broken stages is 10k problems; the first few say what is wrong


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid stack config"]
    problems = err.errors()
    for problem in problems[:MAX_PROBLEMS]:
        parts = [p for k, p in enumerate(problem["loc"]) if not (p in WHEN_TAGS and problem["loc"][k - 1] == "when")]
        loc = ".".join(str(p) for p in parts)[:200] or "(top level)"  # an unknown key may be huge
        msg = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "value_error" and ":" in msg and not problem["loc"]:
            lines.append(f"  {msg}")
        else:
            got = problem.get("input")
            got_text = "" if isinstance(got, dict) or got is None else f" (got {_short(got)})"
            lines.append(f"  {loc}: {msg}{got_text}")
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_PROBLEMS} more")
    return "\n".join(lines)


def parse_stack_config(data: object, where: str = "<config>", source_path: Path | None = None) -> StackConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping with 'name' and 'stages' at the top level, got {type(data).__name__}"
        )
    try:
        cfg = StackConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, where)) from None
    cfg.source_path = source_path
    return cfg


def load_stack_config(path: str | Path) -> StackConfig:
    """Read and validate a stack YAML file: at most MAX_STACK_BYTES (checked before parsing), strict UTF-8, parsed by
    `fslm.io.StrictYamlLoader` (yaml.safe_load's loader with the alias expansion and nesting capped, so an alias
    bomb is refused while it is being read, not after it has eaten the memory)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: stack file not found")
    text = read_text(path, limit=MAX_STACK_BYTES, error=ConfigError)
    data = load_yaml(text, str(path), error=ConfigError)
    return parse_stack_config(data, str(path), path.resolve())


def default_stack_path() -> Path:
    return Path(str(resources.files("fslm") / "stacks" / "default.yaml"))


def load_default_stack_config() -> StackConfig:
    return load_stack_config(default_stack_path())
