"""Stack configuration: YAML on disk, validated with pydantic; errors name the file and the field path.

`stage.py`: one stage (`StageConfig`); `stack.py`: the stack and its stage graph (`StackConfig`); `load.py`: reading
and validating a file; `derive.py`: stacks derived from one (the trainable chain, stages removed). Everything public
is importable from `fslm.config`.
"""

from fslm.config.derive import check_chain, free_form_chain, keep_stages, without_stage
from fslm.config.load import (
    MAX_PROBLEMS,
    MAX_STACK_BYTES,
    default_stack_path,
    load_default_stack_config,
    load_stack_config,
    parse_stack_config,
)
from fslm.config.stack import StackConfig
from fslm.config.stage import GRAPH_FIELDS, KINDS, NAME, PLACEHOLDER, PROMPT, StageConfig

__all__ = [
    "GRAPH_FIELDS",
    "KINDS",
    "MAX_PROBLEMS",
    "MAX_STACK_BYTES",
    "NAME",
    "PLACEHOLDER",
    "PROMPT",
    "StackConfig",
    "StageConfig",
    "check_chain",
    "default_stack_path",
    "free_form_chain",
    "keep_stages",
    "load_default_stack_config",
    "load_stack_config",
    "parse_stack_config",
    "without_stage",
]
