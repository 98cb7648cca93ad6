"""GGUF files for llama.cpp: Hugging Face llama folders and PEFT LoRA adapters converted (or quantized by llama.cpp)
once and cached by content digest, and the GGUF a model reference runs on."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from fslm.engine.llamacpp.runtime import import_llama_cpp, quiet_logs
from fslm.errors import ConfigError, FslmError, ModelFileError

CONVERTER_VERSION = 1  # bump when the GGUF/LoRA conversion changes: cached files are keyed by it
WEIGHT_FORMATS = ("auto", "f32", "f16", "q8_0", "q4_0", "q4_k_m")
# Formats llama.cpp's own quantizer (llama_model_quantize) writes from the f32 conversion: the ones its CPU backend
# repacks for batched matrix products (q4_0 runs 2x q4_1's batch-16 decode on an AVX-512 EPYC, docs/engine.md).
QUANTIZED_BY_LLAMA = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


# ---- conversions (run once, cached) ----------------------------------------------------------------------------------


def _cache_root() -> Path:
    from fslm.settings import get_settings

    return get_settings().cache_dir / "llamacpp"


def _atomic_write(target: Path, write) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the output rows of a q/k projection (or of a LoRA B matrix) the way llama.cpp's rope expects them:
    convert_hf_to_gguf.py's LlamaModel.permute (HF keeps rotary halves, GGUF interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")
_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[^.]+)?\.weight$"
)


def _rope_theta(config: dict) -> float:
    rope = config.get("rope_parameters") or {}
    return float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0)


def _check_llama_config(folder: Path, config: dict) -> None:
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" or archs not in (["LlamaForCausalLM"], []):
        raise FslmError(
            f"{folder}: the llama.cpp engine converts only llama-architecture folders (got model_type "
            f"{config.get('model_type')!r}); pass a .gguf file (llama.cpp's convert_hf_to_gguf.py) or use --engine hf"
        )
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise FslmError(f"{folder}: rope scaling {rope.get('rope_type')!r} is not supported by the GGUF converter")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise FslmError(f"{folder}: attention/MLP biases are not supported by the GGUF converter")


def _tokenizer_vocab(folder: Path, vocab_size: int) -> tuple[list[str], list[int], list[str], dict]:
    """Tokens (by id, padded to the model's rows), token types, BPE merges and special ids for the GGUF metadata.

    llama.cpp needs a vocabulary to load a model, but fslm never uses it: texts are tokenized by the HF tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    data = json.loads((folder / "tokenizer.json").read_text()) if (folder / "tokenizer.json").is_file() else {}
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise FslmError(f"{folder}: the GGUF converter needs a byte-level BPE tokenizer.json (got {model.get('type')})")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    by_id = {i: t for t, i in tok.get_vocab().items()}
    special = set(tok.all_special_ids) | {int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(3 if i in special else 1)  # CONTROL / NORMAL
        else:
            tokens.append(f"[PAD{i}]")
            types.append(5)  # UNUSED
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}
    return tokens, types, merges, ids


def _gguf_tensor_name(name: str, config: dict) -> str | None:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return None if config.get("tie_word_embeddings", True) else "output.weight"
    m = _LAYER_KEY.match(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    if name.endswith("rotary_emb.inv_freq"):
        return None
    raise FslmError(f"GGUF converter: unexpected tensor {name!r}")


def hf_to_gguf(folder: str | Path, out: str | Path, weight_format: str = "q8_0") -> Path:
    """Write a llama-architecture Hugging Face folder as a GGUF llama.cpp loads (f32, f16 or q8_0 matrices; norms in
    f32). Mirrors convert_hf_to_gguf.py for LlamaForCausalLM: same tensor names, same q/k row permutation."""
    import gguf
    from safetensors.numpy import load_file

    folder, out = Path(folder), Path(out)
    config = json.loads((folder / "config.json").read_text())
    _check_llama_config(folder, config)
    types = {
        "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    }
    if weight_format not in types:
        raise ConfigError(f"cannot write a {weight_format!r} GGUF; choose from {', '.join(types)}")
    qtype, ftype = types[weight_format]
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    weights: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    if "model.embed_tokens.weight" not in weights:
        raise ModelFileError(f"{folder}: no safetensors weights with model.embed_tokens.weight to convert")
    vocab_rows = int(weights["model.embed_tokens.weight"].shape[0])
    tokens, token_types, merges, ids = _tokenizer_vocab(folder, vocab_rows)

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(folder.name)
        w.add_block_count(int(config["num_hidden_layers"]))
        w.add_context_length(int(config.get("max_position_embeddings") or 2048))
        w.add_embedding_length(hidden)
        w.add_feed_forward_length(int(config["intermediate_size"]))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
        w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        w.add_rope_freq_base(_rope_theta(config))
        w.add_vocab_size(vocab_rows)
        w.add_file_type(ftype)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(token_types)
        w.add_token_merges(merges)
        for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("pad", w.add_pad_token_id)):
            if ids[key] is not None:
                add(int(ids[key]))
        w.add_add_bos_token(False)
        for name, tensor in sorted(weights.items()):
            target = _gguf_tensor_name(name, config)
            if target is None:
                continue
            data = tensor.astype(np.float32)
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                data = _permute_rows(data, n_head if "q_proj" in name else n_kv)
            if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
                w.add_tensor(target, data)
            elif qtype == gguf.GGMLQuantizationType.F16:
                w.add_tensor(target, data.astype(np.float16))
            else:
                w.add_tensor(target, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    return _atomic_write(out, write)


def _weights_digest(folder: Path) -> str:
    from fslm.digest import hash_file

    h = hashlib.sha256()
    for f in [*sorted(folder.glob("*.safetensors")), folder / "config.json", folder / "tokenizer.json"]:
        if f.is_file():
            h.update(f.name.encode())
            hash_file(h, f)
    return h.hexdigest()


def cached_gguf(folder: Path, weight_format: str) -> Path:
    """The GGUF of a HF folder, converted once (with a notice on stderr) and cached by the folder's content digest."""
    name = f"{folder.name}-{_weights_digest(folder)[:16]}-v{CONVERTER_VERSION}-{weight_format}.gguf"
    target = _cache_root() / "models" / name
    if target.is_file():
        return target
    from fslm.models import conversion_notice

    if weight_format in QUANTIZED_BY_LLAMA:
        source = cached_gguf(folder, "f32")
        with conversion_notice(f"quantizing {folder.name} to {weight_format} with llama.cpp (once)…"):
            return quantize_gguf(source, target, weight_format)
    with conversion_notice(f"converting {folder} to a {weight_format} GGUF for llama.cpp (once)…"):
        return hf_to_gguf(folder, target, weight_format)


def quantize_gguf(source: Path, out: Path, weight_format: str) -> Path:
    """`source` (an f32 GGUF) quantized by llama.cpp's `llama_model_quantize` into `out` (write, then rename)."""
    from fslm.cpu import pick_threads

    lib = import_llama_cpp()
    quiet_logs(lib)
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, QUANTIZED_BY_LLAMA[weight_format])
    params.nthread = pick_threads(None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        rc = lib.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise ModelFileError(f"llama.cpp could not quantize {source} to {weight_format} (code {rc})")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def lora_to_gguf(adapter_dir: str | Path, out: str | Path, *, arch: str, n_head: int, n_head_kv: int) -> Path:
    """Write a PEFT LoRA adapter folder as a GGUF LoRA for a base of architecture `arch` (what llama.cpp's
    convert_lora_to_gguf.py writes: `blk.N.<tensor>.weight.lora_a/.lora_b` in f32 and `adapter.lora.alpha`)."""
    import gguf
    from safetensors.numpy import load_file

    adapter_dir, out = Path(adapter_dir), Path(out)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    where = f"cannot convert LoRA adapter {adapter_dir} for llama.cpp"
    if cfg.get("peft_type") != "LORA":
        raise ConfigError(f"{where}: peft_type {cfg.get('peft_type')!r} (only LORA)")
    for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if cfg.get(key):
            raise ConfigError(f"{where}: {key} is not supported")
    if cfg.get("bias", "none") != "none":
        raise ConfigError(f"{where}: LoRA biases are not supported")
    r = int(cfg["r"])
    alpha = float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):
        alpha *= math.sqrt(r)  # llama.cpp scales by alpha / r; rsLoRA means alpha / sqrt(r)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for name, value in tensors.items():
        m = _LORA_KEY.match(name)
        proj = f"{m.group(2)}.{m.group(3)}" if m else None
        if m is None or proj not in _LAYER_NAMES:
            raise ConfigError(f"{where}: tensor {name!r} targets a module the llama.cpp engine does not adapt")
        data = value.astype(np.float32)
        if arch == "llama" and m.group(3) in ("q_proj", "k_proj") and m.group(4) == "B":
            data = _permute_rows(data, n_head if m.group(3) == "q_proj" else n_head_kv)
        pairs[f"blk.{m.group(1)}.{_LAYER_NAMES[proj]}.weight"][m.group(4)] = data
    for target, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ConfigError(f"{where}: {target} lacks lora_A or lora_B")

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for target, ab in sorted(pairs.items()):
            w.add_tensor(target + ".lora_a", np.ascontiguousarray(ab["A"]))
            w.add_tensor(target + ".lora_b", np.ascontiguousarray(ab["B"]))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    return _atomic_write(out, write)


def cached_lora(adapter_dir: Path, *, arch: str, n_head: int, n_head_kv: int) -> Path:
    """The GGUF LoRA of a PEFT folder, cached as <sha256 of adapter_model.safetensors>-<config digest>-<base shape>."""
    from fslm.digest import file_sha256

    sha = file_sha256(adapter_dir / "adapter_model.safetensors")
    cfg_sha = file_sha256(adapter_dir / "adapter_config.json")[:8]
    target = _cache_root() / "lora" / f"{sha}-{cfg_sha}-{arch}-h{n_head}-{n_head_kv}-v{CONVERTER_VERSION}.gguf"
    if target.is_file():
        return target
    return lora_to_gguf(adapter_dir, target, arch=arch, n_head=n_head, n_head_kv=n_head_kv)


def gguf_weight_format(path: str | Path) -> str:
    """The file type of a GGUF, e.g. 'q4_1' or 'q8_0' (its `general.file_type`)."""
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    if field is None:
        return "unknown"
    code = int(field.contents())
    try:
        return gguf.LlamaFileType(code).name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
    except ValueError:
        return f"type{code}"


def gguf_weight_bytes(path: str | Path) -> int:
    """Bytes of all tensors of a GGUF: what one decode step streams (a tied embedding is read once, as the output)."""
    import gguf

    return int(sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors))


def resolve_gguf(model_ref: str, weight_format: str = "auto") -> tuple[Path, Path | None]:
    """(GGUF to run, HF folder with the tokenizer or None) for a model reference."""
    from fslm.models import check_model_folder, load_model, resolve

    if weight_format not in WEIGHT_FORMATS:
        raise ConfigError(f"unknown weight_format {weight_format!r}; choose from {', '.join(WEIGHT_FORMATS)}")
    source = resolve(model_ref)
    folder = source.cache_dir if source.cached else source.path if source.kind == "hf_dir" else None
    if source.kind in ("embedded", "gguf") and source.path is not None and weight_format == "auto":
        return Path(source.path), folder
    if source.kind == "hub":
        raise FslmError(
            f"{model_ref}: the llama.cpp engine runs local models only (a .gguf, an embedded name or a folder)"
        )
    if folder is None:  # a GGUF asked for another format: its dequantized safetensors copy is converted
        load_model(model_ref)
        folder = resolve(model_ref).cache_dir
    assert folder is not None
    check_model_folder(Path(folder))  # config and safetensors sound before the converter reads them
    return cached_gguf(Path(folder), "q8_0" if weight_format == "auto" else weight_format), Path(folder)
