"""Session fixtures: tiny random models built from a config (offline, seconds), shared by every test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Runs made by tests stay out of the developer's run log (fslm logs); the tests of the log turn it on in a temp folder.
os.environ["FSLM_LOG"] = "0"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Question: Which planet is largest? Answer: Jupiter is the largest planet.",
    "Restate the question. List the key facts. Think step by step. Give the final answer.",
    "A spider has eight legs. Water boils at 100 degrees. Two plus two is four.",
    "the quick brown fox jumps over the lazy dog 0123456789 , . ? ! : ; ' \" ( ) - +",
]


def build_tiny_model(folder: Path, *, seed: int = 0, vocab_size: int = 384, layers: int = 2) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer and a ChatML template, saved as a HF model folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so greedy choices are rarely near-ties
        model.model.embed_tokens.weight.normal_(0, 0.5)
        # Special tokens rarely win, so random generations are visible text rather than empty.
        model.model.embed_tokens.weight[: len(specials)].mul_(0.05)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from fslm.engine import load_engine

    return load_engine(str(tiny_model_dir))


def make_lora_adapter(
    model_dir: Path, folder: Path, *, seed: int = 1, rank: int = 4, targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> Path:
    """A random (non-zero) LoRA adapter, so activating it visibly changes the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(
        base, LoraConfig(r=rank, lora_alpha=16, target_modules=list(targets), init_lora_weights=False)
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: make_lora_adapter(tiny_model_dir, root / name, seed=i + 1) for i, name in enumerate(["intent", "answer"])
    }


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch):
    """Point FSLM_CACHE_DIR at a temp folder for one test."""
    from fslm.settings import reset_settings

    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))
    reset_settings()
    yield tmp_path / "cache"
    reset_settings()


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster (2 CPUs) for every Ray test of the session: it takes seconds to start. Ray binds it
    to this machine's own address (it replaces 127.0.0.1 so that other nodes could join), never another machine's."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'fslm[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def ray_worker_names() -> set[str]:
    """Names of the fslm Ray worker actors the cluster lists (a killed actor's name may linger for a moment)."""
    from ray.util import list_named_actors

    return {n for n in list_named_actors() if n.startswith("fslm-worker-")}


def new_ray_worker(ray, before: set[str]):
    """(handle, pid) of a live fslm worker actor not among `before`: one of the run in progress, to kill mid-run."""
    for name in sorted(ray_worker_names() - before):
        handle = ray.get_actor(name)
        try:
            return handle, ray.get(handle.pid.options(concurrency_group="control").remote(), timeout=30)
        except Exception:  # died already
            continue
    raise AssertionError("no live fslm worker actor of this run")
