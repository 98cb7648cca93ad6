"""The llama-cpp-python runtime: imported on first use (it is an optional extra), with its log kept quiet."""

from __future__ import annotations

import ctypes
import os

from fslm.errors import FslmError

INSTALL_HINT = "pip install 'fslm[fast]'"


def import_llama_cpp():
    """The llama_cpp module, or an FslmError saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise FslmError(
            "the llama.cpp engine needs llama-cpp-python, which is not installed: "
            f"{INSTALL_HINT} (compiles llama.cpp once, ~8-13 min on 2 cores), or use --engine hf"
        ) from None
    return llama_cpp


_LOG_CALLBACK = None


def quiet_logs(lib) -> None:
    """Silence llama.cpp's stderr log (model metadata, context banners); errors surface as return codes.
    FSLM_LLAMACPP_LOG=1 keeps it."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None and os.environ.get("FSLM_LLAMACPP_LOG") != "1":
        _LOG_CALLBACK = lib.llama_log_callback(lambda level, text, data: None)
        lib.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
