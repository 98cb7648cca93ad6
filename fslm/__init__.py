"""fslm: fine-tuning stacks of small language models.

The Python API mirrors the CLI verb for verb:
    fslm.run(prompt, stack=None)      -> StackResult      (fslm run)
    fslm.list_models()                -> [ModelInfo]      (fslm models)
    fslm.validate_stack(path)         -> StackConfig      (fslm stack validate)
"""

from fslm.config import StackConfig, StageConfig, load_stack_config
from fslm.errors import FslmError
from fslm.models import list_models, load_model, resolve
from fslm.stack import Stack, StackResult, StageRecord, run
from fslm.stack_checks import validate_stack
from fslm.version import __version__

__all__ = [
    "FslmError",
    "__version__",
    "Stack",
    "StackConfig",
    "StackResult",
    "StageConfig",
    "StageRecord",
    "list_models",
    "load_model",
    "load_stack_config",
    "resolve",
    "run",
    "validate_stack",
]
