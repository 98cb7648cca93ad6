"""The llama-cpp-python runtime: imported on first use (it is an optional extra), with its log kept quiet."""

from __future__ import annotations

import ctypes
import os
from functools import cache
from pathlib import Path

from fslm.errors import FslmError

INSTALL_HINT = "pip install 'fslm[fast]'"
AMX_FIX_MARKER = "FSLM_AMX_FIX"  # written into the package by scripts/llama-cpp-build.sh


def import_llama_cpp():
    """The llama_cpp module, or an FslmError saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise FslmError(
            "the llama.cpp engine needs llama-cpp-python, which is not installed: "
            f"{INSTALL_HINT} (compiles llama.cpp once, ~8-13 min on 2 cores), or use --engine hf"
        ) from None
    _check_amx(llama_cpp)
    return llama_cpp


def amx_unfixed(system_info: str, package_dir: Path) -> bool:
    """True for a build whose ggml AMX kernels lack the tile-configuration fix of scripts/llama-cpp-build.sh: gcc
    drops the stores that configure the tiles, and the first batched matmul dies with SIGILL. A build for a CPU
    without AMX, or one compiled with -mno-amx-int8, has no such kernels."""
    return "AMX_INT8 = 1" in system_info and not (package_dir / AMX_FIX_MARKER).exists()


@cache
def _check_amx(llama_cpp) -> None:
    """An FslmError (so `engine: auto` falls back to HF, said once) instead of a SIGILL that kills the process."""
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    if amx_unfixed(info, Path(llama_cpp.__file__).parent):
        raise FslmError(
            "this llama-cpp-python build has ggml's AMX kernels without fslm's tile-configuration fix, and they die "
            "with SIGILL: rebuild it with scripts/llama-cpp-build.sh VENV VERSION (make install-test does), or "
            "compile them out with CMAKE_ARGS='-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8', "
            "or use --engine hf"
        )


_LOG_CALLBACK = None


def quiet_logs(lib) -> None:
    """Silence llama.cpp's stderr log (model metadata, context banners); errors surface as return codes.
    FSLM_LLAMACPP_LOG=1 keeps it."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None and os.environ.get("FSLM_LLAMACPP_LOG") != "1":
        _LOG_CALLBACK = lib.llama_log_callback(lambda level, text, data: None)
        lib.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
