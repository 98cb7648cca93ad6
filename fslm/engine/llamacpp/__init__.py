"""llama.cpp backend: the model's GGUF weights (4- or 8-bit) run by llama.cpp under fslm's own tokenizer and decode loop.

What runs where
- Weights: an embedded model is already a GGUF (SmolLM2-135M-Instruct: Q4_1 layers, a Q8_0 embedding/output matrix),
  and llama.cpp runs that very file, so its weights are exactly the ones HFEngine dequantizes to fp32 (checked bit for
  bit). A local Hugging Face folder of the llama architecture is converted once to GGUF (q8_0 by default, or f32/f16)
  and cached by its content digest.
- Tokens: texts are chat-rendered, tokenized and decoded by the model's Hugging Face tokenizer, as in HFEngine;
  llama.cpp only turns token ids into logits. The decode loop is decode.py's, step for step (its repetition penalty,
  generated-only n-gram guard, seeded sampling and stop-string rule), so only the logits' numerics differ. With f32
  weights they match HF's to ~1e-5; the 4/8-bit kernels also quantize activations to 8 bits, which moves
  log-probabilities by a few hundredths per token and can flip near-tie greedy choices.
- Adapters: a PEFT LoRA (`adapter_model.safetensors`) is converted once to a GGUF LoRA, cached under
  FSLM_CACHE_DIR/llamacpp/lora keyed by the safetensors file's sha256, and loaded on the ONE model; each call
  activates its adapter on the context (`llama_set_adapters_lora`), so a stack's stages share the base weights.
- Batching: each row of a batch is its own llama.cpp sequence with its own KV stream (no padding); a finished row's
  stream is freed and it leaves the batch, as in decode.py. Separate streams keep a row's attention independent of
  its batch-mates, so greedy batch output equals one-by-one output (a unified KV cache interleaves rows' cells and
  breaks that under quantized kernels). Flash attention is off by default: llama.cpp's CPU kernel rounds Q.K to f16.
- Scoring: each distinct context is run once and its KV stream copied to one sequence per continuation
  (`llama_memory_seq_cp`); log-probabilities come from llama.cpp's logits. `score_backend="hf"` instead delegates
  scoring to an HFEngine built on first use (HF numerics, at HF's speed).

llama-cpp-python has no wheel on PyPI: `pip install llama-cpp-python` compiles llama.cpp once (8-13 min on 2 cores)
and pip caches the wheel. Without it this module raises FslmError naming the install command.

Modules: `runtime.py` (importing llama-cpp-python, its log), `convert.py` (GGUF and GGUF-LoRA conversion and cache,
`resolve_gguf`), `engine.py` (`LlamaCppEngine`). Everything public is importable from `fslm.engine.llamacpp`.
"""

from fslm.engine.llamacpp.convert import (
    CONVERTER_VERSION,
    QUANTIZED_BY_LLAMA,
    WEIGHT_FORMATS,
    cached_gguf,
    cached_lora,
    gguf_weight_bytes,
    gguf_weight_format,
    hf_to_gguf,
    lora_to_gguf,
    quantize_gguf,
    resolve_gguf,
)
from fslm.engine.llamacpp.engine import LlamaCppEngine
from fslm.engine.llamacpp.runtime import INSTALL_HINT, import_llama_cpp

__all__ = [
    "CONVERTER_VERSION",
    "INSTALL_HINT",
    "QUANTIZED_BY_LLAMA",
    "WEIGHT_FORMATS",
    "LlamaCppEngine",
    "cached_gguf",
    "cached_lora",
    "gguf_weight_bytes",
    "gguf_weight_format",
    "hf_to_gguf",
    "import_llama_cpp",
    "lora_to_gguf",
    "quantize_gguf",
    "resolve_gguf",
]
