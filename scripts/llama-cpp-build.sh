#!/usr/bin/env bash
# llama-cpp-python compiled once into a venv from its sdist, with one fix to ggml's AMX kernels, so that a Xeon with
# AMX runs them instead of dying. Usage: scripts/llama-cpp-build.sh VENV VERSION   (`make install-test` calls it)
#
# The fix: ggml-cpu/amx/mmq.cpp builds its tile configuration in a stack temporary that only `_tile_loadconfig` reads;
# gcc 12 treats the stores to it as dead and keeps only `palette_id`, so every tile has 0 rows and the first
# `tilezero` raises SIGILL (upstream ggml-org/llama.cpp PR #26954 moves the config to .rodata). Here the config is a
# function-local static, and it is loaded on every call rather than once per thread: ggml's OpenMP threads are torch's
# (both load the same libgomp.so.1), and a oneDNN AMX kernel run in one of them may leave its own tile configuration
# or release the tiles. On CPUs without AMX the kernels are not compiled (-march=native): nothing changes there.
#
# Idempotent: a venv that already has this version with the fix (llama_cpp/FSLM_AMX_FIX) is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:?usage: $0 VENV VERSION}
VERSION=${2:?usage: $0 VENV VERSION}
PY="$VENV/bin/python"
# One matmul kernel for every batch size, no multimodal library (docs/engine.md, "Batch equals one-by-one").
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_LLAMAFILE=OFF -DLLAVA_BUILD=OFF}"

if "$PY" - "$VERSION" <<'EOF'
import sys
from importlib import metadata, util
try:
    ok = metadata.version("llama-cpp-python") == sys.argv[1]
except metadata.PackageNotFoundError:
    ok = False
spec = util.find_spec("llama_cpp") if ok else None
sys.exit(0 if spec and (__import__("pathlib").Path(spec.origin).parent / "FSLM_AMX_FIX").exists() else 1)
EOF
then
    exit 0
fi

SRC=$(mktemp -d "${TMPDIR:-/tmp}/fslm-llama-cpp.XXXXXX")
trap 'rm -rf "$SRC"' EXIT
echo "llama-cpp-python $VERSION: compiling llama.cpp once (~8-13 min on 2 cores)"
"$VENV/bin/pip" download --quiet --no-deps --no-binary :all: --dest "$SRC" "llama-cpp-python==$VERSION"
tar -xzf "$SRC"/llama_cpp_python-"$VERSION".tar.gz -C "$SRC"
TREE="$SRC/llama_cpp_python-$VERSION"

"$PY" - "$TREE" <<'EOF'
import re
import sys
from pathlib import Path

tree = Path(sys.argv[1])
mmq = tree / "vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp"
text = mmq.read_text()
pattern = re.compile(
    r"inline void ggml_tile_config_init\(void\) \{\n    static thread_local bool done = false;\n.*?\n    done = true;\n\}\n",
    re.S,
)
fixed = """inline void ggml_tile_config_init(void) {
    alignas(64) static const tile_config_t tc = [] {
        tile_config_t c = {};
        c.palette_id = 1;
        c.rows[0] = 8;   c.colsb[0] = 64;
        c.rows[1] = 8;   c.colsb[1] = 64;
        c.rows[2] = 16;  c.colsb[2] = 32;
        c.rows[3] = 16;  c.colsb[3] = 32;
        c.rows[4] = 16;  c.colsb[4] = 64;
        c.rows[5] = 16;  c.colsb[5] = 64;
        c.rows[6] = 16;  c.colsb[6] = 64;
        c.rows[7] = 16;  c.colsb[7] = 64;
        return c;
    }();
    _tile_loadconfig(&tc);
}
"""
text, n = pattern.subn(fixed, text)
if n != 1:
    sys.exit(f"error: {mmq}: ggml_tile_config_init not found as expected; update scripts/llama-cpp-build.sh")
mmq.write_text(text)
(tree / "llama_cpp/FSLM_AMX_FIX").write_text("ggml AMX tile config: static and loaded per call (scripts/llama-cpp-build.sh)\n")
EOF

"$VENV/bin/pip" install --quiet --no-deps "$TREE"
echo "llama-cpp-python $VERSION: installed"
