"""`LlamaCppEngine`: the Engine protocol on one llama.cpp model and context (generation, streaming, log-probabilities,
scoring, LoRA adapters switched per call).

Why one class of some 600 lines: generation, scoring and prefix reuse all work on the same few pieces of state (the
context, sized and recreated by `_context`; the ctypes batch and its numpy views; one KV stream per sequence, cleared
and copied between calls; the adapter active on the context). Split into mixins or helper modules, each part would
reach into the others' private state, and the invariants that keep greedy batch output equal to one-by-one output
(a row's stream freed as it finishes, a state restored before it is extended) would no longer be readable in one
place."""

from __future__ import annotations

import ctypes
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from fslm.engine import EngineStats, Generation, GenerationParams, Score
from fslm.engine.decode import cut_at_stop, fit_pairs, next_tokens, render_chat_text, split_pair
from fslm.engine.llamacpp.convert import cached_lora, gguf_weight_format, resolve_gguf
from fslm.engine.llamacpp.runtime import import_llama_cpp, quiet_logs
from fslm.engine.logprobs import LoggedGeneration, StepRecorder, logged_generations
from fslm.engine.prefix import PrefixStore, count_reuse
from fslm.engine.streaming import OnText, RowStreams
from fslm.errors import ConfigError, FslmError, InputError, ModelFileError

_KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}  # GGML_TYPE_*
_MAX_SEQ = 256  # LLAMA_MAX_SEQ


class LlamaCppEngine:
    """The Engine protocol on llama.cpp: one model, one context (recreated larger when a batch needs more KV cells)."""

    def __init__(
        self,
        gguf_path: str | Path,
        tokenizer,
        *,
        model_ref: str | None = None,
        eos_ids: Sequence[int] | None = None,
        batch_size: int = 16,
        threads: int | None = None,
        n_batch: int = 512,
        n_seq_max: int | None = None,
        kv_type: str = "f16",
        kv_unified: bool = False,
        kv_cells_budget: int = 16384,
        flash_attn: bool | None = False,
        score_backend: str = "native",
        score_wave_tokens: int = 8192,
        hf_dtype: str = "float32",
        prefix_cache_tokens: int = 2048,
    ):
        from fslm.cpu import pick_threads
        from fslm.models import check_gguf

        self.llama = import_llama_cpp()
        if kv_type not in _KV_TYPES:
            raise ConfigError(f"unknown kv_type {kv_type!r}; choose from {', '.join(_KV_TYPES)}")
        if score_backend not in ("native", "hf"):
            raise ConfigError(f"unknown score_backend {score_backend!r}; choose native or hf")
        self.gguf_path = Path(gguf_path)
        check_gguf(self.gguf_path)  # header and tensor table sound: a damaged file is one error naming it, not a crash
        self.model_ref = model_ref or str(gguf_path)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.threads = pick_threads(threads)
        self.n_batch = n_batch
        self.kv_type = kv_type
        self.kv_unified = kv_unified
        self.kv_cells_budget = kv_cells_budget
        self.n_seq_max = min(_MAX_SEQ, max(n_seq_max or (64 if kv_unified else batch_size), 2))
        self.batch_size = min(batch_size, self.n_seq_max)
        self.flash_attn = flash_attn
        self.score_backend = score_backend
        self.score_wave_tokens = score_wave_tokens
        self.hf_dtype = hf_dtype
        self.stats = EngineStats()
        # KV states of stage heads, saved as llama.cpp sequence states (bytes) and restored into each row's stream.
        self.prefixes = PrefixStore(budget_tokens=prefix_cache_tokens)
        self.weight_format = gguf_weight_format(self.gguf_path)
        self._adapters: dict[str, str] = {}
        self._loras: dict[str, object] = {}
        self._hf = None
        self._ctx = None
        self._batch = None
        self._n_ctx = 0
        self._per_seq = 0
        self._n_streams = 0
        self._current: object = ()  # adapter active on the context; () = none set yet

        lib = self.llama
        quiet_logs(lib)
        lib.llama_backend_init()
        self._model = lib.llama_model_load_from_file(str(self.gguf_path).encode(), lib.llama_model_default_params())
        if not self._model:
            raise ModelFileError(f"llama.cpp could not load {self.gguf_path}")
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.context_window = int(lib.llama_model_n_ctx_train(self._model))
        self._params = int(lib.llama_model_n_params(self._model))
        self.arch = self._meta("general.architecture") or "llama"
        self.n_head = int(self._meta(f"{self.arch}.attention.head_count") or 0)
        self.n_head_kv = int(self._meta(f"{self.arch}.attention.head_count_kv") or self.n_head)
        ids = list(eos_ids or [])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        if not ids:
            ids = [int(lib.llama_vocab_eos(self._vocab))]
        self.eos_ids = sorted({int(i) for i in ids if i is not None and int(i) >= 0})

    @classmethod
    def from_ref(
        cls, model_ref: str, *, dtype: str = "float32", weight_format: str = "auto", **kwargs
    ) -> LlamaCppEngine:
        """`dtype` is the HF dtype (used only by score_backend="hf"); the weights are the GGUF's `weight_format`:
        "auto" runs an embedded model's or a .gguf file's own quantization and converts a HF folder to q8_0."""
        import_llama_cpp()
        from fslm.models import load_tokenizer, read_json_object

        path, folder = resolve_gguf(model_ref, weight_format)
        tokenizer = load_tokenizer(model_ref)
        eos: list[int] = []
        if folder is not None and (folder / "generation_config.json").is_file():
            value = read_json_object(folder / "generation_config.json").get("eos_token_id")
            eos = value if isinstance(value, list) else [value] if value is not None else []
        return cls(path, tokenizer, model_ref=model_ref, eos_ids=eos, hf_dtype=dtype, **kwargs)

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self.llama.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def _free_context(self) -> None:
        lib = self.llama
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            lib.llama_free(self._ctx)
            self._ctx = None
        self._n_ctx = self._per_seq = self._n_streams = 0

    def close(self) -> None:
        """Free the context, the adapters and the model (also done when the engine is garbage-collected)."""
        self._free_context()
        for handle in self._loras.values():
            self.llama.llama_adapter_lora_free(handle)
        self._loras.clear()
        if getattr(self, "_model", None):
            self.llama.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn the library down already
            pass

    @property
    def params(self) -> int:
        return self._params

    @property
    def dtype(self) -> str:
        """Part of the stack cache's key: this engine's outputs are not HF's."""
        return f"llamacpp-{self.weight_format}"

    # ---- adapters -------------------------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str) -> None:
        from fslm.models import check_adapter_folder

        if name in self._adapters:
            if self._adapters[name] == str(path):
                return
            raise ConfigError(f"adapter name {name!r} is already loaded from {self._adapters[name]}")
        try:
            check_adapter_folder(Path(path))
        except ModelFileError as err:
            raise ConfigError(f"cannot load LoRA adapter {name!r}: {err}") from None
        converted = cached_lora(Path(path), arch=self.arch, n_head=self.n_head, n_head_kv=self.n_head_kv)
        handle = self.llama.llama_adapter_lora_init(self._model, str(converted).encode())
        if not handle:
            raise ConfigError(f"cannot load LoRA adapter {name!r} from {path}: llama.cpp refused {converted}")
        self._loras[name] = handle
        self._adapters[name] = str(path)
        if self._hf is not None:
            self._hf.add_adapter(name, path)

    def adapters(self) -> list[str]:
        return list(self._adapters)

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self._adapters:
            raise ConfigError(f"adapter {adapter!r} is not loaded; loaded: {self.adapters() or 'none'}")

    def _use(self, adapter: str | None) -> None:
        self._check_adapter(adapter)
        if adapter == self._current:
            return
        lib = self.llama
        if adapter is None:
            rc = lib.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            handles = (lib.llama_adapter_lora_p_ctypes * 1)(self._loras[adapter])
            scales = (ctypes.c_float * 1)(1.0)
            rc = lib.llama_set_adapters_lora(self._ctx, handles, 1, scales)
        if rc != 0:
            raise FslmError(f"llama.cpp could not activate adapter {adapter!r} (code {rc})")
        self._current = adapter

    # ---- text -----------------------------------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return render_chat_text(self.tokenizer, messages)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    # ---- llama.cpp context and batches ----------------------------------------------------------------------------
    @staticmethod
    def _stream_len(tokens: int) -> int:
        return max(256, 1 << max(0, math.ceil(math.log2(max(tokens, 1)))))

    def _streams(self, tokens: int) -> int:
        """How many sequences of up to `tokens` tokens fit one context: n_seq_max with a unified KV cache, else as many
        KV streams as the cell budget holds (at least 2: a scored context and one continuation)."""
        if self.kv_unified:
            return self.n_seq_max
        return max(2, min(self.n_seq_max, self.kv_cells_budget // self._stream_len(tokens)))

    def _context(self, per_seq: int, n_seqs: int) -> None:
        """A context with room for `n_seqs` sequences of up to `per_seq` tokens. Without kv_unified every sequence
        has its own KV stream: `streams` streams of n_ctx / streams cells (recreated when a call needs more)."""
        per_seq = self._stream_len(per_seq)
        if self.kv_unified:
            streams, cells = self.n_seq_max, max(4096, per_seq * n_seqs)
        else:
            streams = max(n_seqs, self._streams(per_seq))
            cells = per_seq * streams
        if self._ctx is not None and (
            (self.kv_unified and self._n_ctx >= cells)
            or (not self.kv_unified and self._per_seq >= per_seq and self._n_streams >= n_seqs)
        ):
            return
        lib = self.llama
        self._free_context()
        p = lib.llama_context_default_params()
        p.n_ctx = cells
        p.n_batch = p.n_ubatch = self.n_batch
        p.n_seq_max = streams
        p.n_threads = p.n_threads_batch = self.threads
        p.kv_unified = self.kv_unified
        p.no_perf = True
        p.type_k = p.type_v = _KV_TYPES[self.kv_type]
        if self.flash_attn is not None:  # None: llama.cpp decides (LLAMA_FLASH_ATTN_TYPE_AUTO)
            p.flash_attn_type = 1 if self.flash_attn else 0
        ctx = lib.llama_init_from_model(self._model, p)
        if not ctx:
            raise FslmError(f"llama.cpp could not create a context of {cells} tokens for {self.model_ref}")
        self._ctx, self._n_ctx, self._n_streams, self._current = ctx, cells, streams, ()
        self._per_seq = cells if self.kv_unified else per_seq
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        b = self._batch
        self._b_token = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        self._b_pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        self._b_nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_batch,))
        self._b_logits = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))
        self._b_seq = [b.seq_id[i] for i in range(self.n_batch)]

    def _clear(self) -> None:
        self.llama.llama_memory_clear(self.llama.llama_get_memory(self._ctx), True)

    def _forget(self, seq: int) -> None:
        self.llama.llama_memory_seq_rm(self.llama.llama_get_memory(self._ctx), seq, -1, -1)

    def _run(
        self, tokens: Sequence[int], pos: Sequence[int], seqs: Sequence[int], want: Sequence[bool]
    ) -> Iterator[np.ndarray]:
        """llama_decode over the tokens in chunks of n_batch; yields, per chunk, a view of the logits of the tokens
        marked in `want` (in order). A view is valid only until the next chunk runs."""
        lib = self.llama
        n = len(tokens)
        for start in range(0, n, self.n_batch):
            end = min(n, start + self.n_batch)
            k = end - start
            self._b_token[:k] = tokens[start:end]
            self._b_pos[:k] = pos[start:end]
            self._b_nseq[:k] = 1
            flags = np.asarray(want[start:end], dtype=np.int8)
            self._b_logits[:k] = flags
            for i, s in enumerate(seqs[start:end]):
                self._b_seq[i][0] = s
            self._batch.n_tokens = k
            rc = lib.llama_decode(self._ctx, self._batch)
            if rc != 0:
                raise FslmError(f"llama.cpp decode failed (code {rc}) on {k} tokens of {self.model_ref}")
            outs = int(flags.sum())
            if outs:
                yield np.ctypeslib.as_array(lib.llama_get_logits(self._ctx), shape=(outs, self.n_vocab))

    def _logits(self, tokens, pos, seqs, want) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([chunk.copy() for chunk in self._run(tokens, pos, seqs, want)]))

    # ---- generation -----------------------------------------------------------------------------------------------
    def generate(self, texts: Sequence[str], params: GenerationParams, adapter: str | None = None) -> list[Generation]:
        return self._generate(texts, params, adapter, None)

    def generate_stream(
        self, texts: Sequence[str], params: GenerationParams, adapter: str | None, on_text: OnText
    ) -> list[Generation]:
        """`generate`, calling `on_text(row, piece)` as each row's text grows token by token (the same decode loop;
        the pieces of a row join to its Generation.text)."""
        return self._generate(texts, params, adapter, on_text)

    def generate_logprobs(
        self,
        texts: Sequence[str],
        params: GenerationParams,
        adapter: str | None,
        top: int,
        on_text: OnText | None = None,
    ) -> list[LoggedGeneration]:
        """`generate` (or `generate_stream` with on_text) plus each kept token's log-probability and the top
        alternatives (fslm.engine.logprobs)."""
        steps: dict[int, list] = {}
        gens = self._generate(texts, params, adapter, on_text, steps, top)
        return logged_generations(gens, steps, self._text, self.tokenizer)

    def _generate(
        self,
        texts: Sequence[str],
        params: GenerationParams,
        adapter: str | None,
        on_text: OnText | None,
        steps: dict[int, list] | None = None,
        top: int = 0,
    ) -> list[Generation]:
        self._check_adapter(adapter)
        encoded = [self.encode(t) for t in texts]
        for i, ids in enumerate(encoded):
            if len(ids) + params.max_new_tokens > self.context_window:
                raise InputError(
                    f"input {i} has {len(ids)} tokens; with max_new_tokens={params.max_new_tokens} it exceeds the "
                    f"context window of {self.context_window} tokens of {self.model_ref}"
                )
            if not ids:
                raise InputError(f"input {i} is empty after tokenization")
        streams = None if on_text is None else RowStreams(len(texts), self._text, params.stop, on_text)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        results: list[Generation | None] = [None] * len(texts)
        start = 0
        while start < len(order):
            # Sorted by length: the batch's last row is its longest; fewer rows when they are long (KV budget).
            size = self.batch_size
            while size > 1:
                longest = len(encoded[order[min(start + size, len(order)) - 1]]) + params.max_new_tokens + 1
                if size <= self._streams(longest):
                    break
                size -= 1
            batch = order[start : start + size]
            start += size
            t0 = time.perf_counter()
            on_token = None if streams is None else streams.token_callback(batch)
            recorder = None if steps is None else StepRecorder(len(batch), top)
            outs = self._generate_batch([encoded[i] for i in batch], params, adapter, on_token, recorder)
            seconds = (time.perf_counter() - t0) / len(batch)
            for k, (i, (text, n_out, reason)) in enumerate(zip(batch, outs, strict=True)):
                results[i] = Generation(text, len(encoded[i]), n_out, seconds, reason)
                if streams is not None:
                    streams.finish(i, text)
                if recorder is not None and steps is not None:
                    steps[i] = recorder.steps[k]
        return [r for r in results if r is not None]

    def _generate_batch(
        self, prompts: list[list[int]], params: GenerationParams, adapter: str | None, on_token=None, on_step=None
    ):
        self._context(max(len(p) for p in prompts) + params.max_new_tokens + 1, len(prompts))
        self._use(adapter)
        prefix = self.prefixes.lookup(prompts, adapter, self._prefix_state)
        decoded = self._decode(prompts, params, adapter, prefix, on_token, on_step)
        skipped = count_reuse(self.stats, prefix, len(prompts), self.prefixes.last_hit)
        self.stats.calls += 1
        self.stats.forward_tokens += sum(len(p) for p in prompts) - skipped + sum(len(t) for t, _ in decoded)
        results = []
        for tokens, reason in decoded:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            cut = cut_at_stop(text, params.stop)
            if cut is not None:
                text, reason = cut, "stop"
            results.append((text.strip(), len(tokens), reason))
            self.stats.generated_tokens += len(tokens)
        return results

    def _prefix_state(self, tokens: list[int]) -> bytes:
        """The KV state of `tokens` under the active adapter as sequence-state bytes (a stage head, computed once)."""
        lib = self.llama
        self._clear()
        for _ in self._run(tokens, range(len(tokens)), [0] * len(tokens), [False] * len(tokens)):
            pass
        size = lib.llama_state_seq_get_size(self._ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        if lib.llama_state_seq_get_data(self._ctx, buf, size, 0) != size:
            raise FslmError(f"llama.cpp could not save a sequence state of {self.model_ref}")
        self._clear()
        self.stats.calls += 1
        self.stats.forward_tokens += len(tokens)
        return bytes(buf)

    def _restore(self, state: bytes, seq: int) -> None:
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if self.llama.llama_state_seq_set_data(self._ctx, buf, len(state), seq) != len(state):
            raise FslmError(f"llama.cpp could not restore a sequence state of {self.model_ref}")

    def _decode(
        self,
        prompts: list[list[int]],
        params: GenerationParams,
        adapter: str | None,
        prefix: tuple[int, bytes] | None = None,
        on_token=None,
        on_step=None,
    ):
        """decode.py's decode_batch on llama.cpp: row r is sequence r; finished rows leave the batch. With `prefix`
        (k, state of the first k tokens) each row's sequence starts from that state and only its own tokens run.
        `on_token(row, generated)` after every kept token (streaming; it changes nothing decoded)."""
        self._context(max(len(p) for p in prompts) + params.max_new_tokens + 1, len(prompts))
        self._clear()
        self._use(adapter)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        k = prefix[0] if prefix is not None else 0
        tokens: list[int] = []
        pos: list[int] = []
        seqs: list[int] = []
        want: list[bool] = []
        for row, p in enumerate(prompts):
            if prefix is not None:
                self._restore(prefix[1], row)
            tokens += p[k:]
            pos += range(k, len(p))
            seqs += [row] * (len(p) - k)
            want += [False] * (len(p) - k - 1) + [True]
        logits = self._logits(tokens, pos, seqs, want)
        vocab = logits.shape[-1]
        use_penalty = params.repetition_penalty != 1.0
        if use_penalty:  # which tokens each row has seen (its own prompt and output)
            seen = torch.zeros(len(prompts), vocab, dtype=torch.bool)
            for row, p in enumerate(prompts):
                seen[row, torch.tensor([t for t in p if t < vocab], dtype=torch.long)] = True
        eos = torch.tensor(self.eos_ids, dtype=torch.long)
        rows = list(range(len(prompts)))
        generated: list[list[int]] = [[] for _ in prompts]
        results: list[tuple[list[int], str] | None] = [None] * len(prompts)
        for step in range(params.max_new_tokens):
            raw = logits.log_softmax(dim=-1) if on_step is not None else None  # before penalties change `logits`
            picked = next_tokens(logits, params, seen if use_penalty else None, [generated[row] for row in rows])
            if on_step is not None:
                on_step(rows, raw, picked)
            is_eos = torch.isin(picked, eos).tolist()
            keep: list[int] = []
            for live, (row, token, ended) in enumerate(zip(rows, picked.tolist(), is_eos)):
                if ended:
                    results[row] = (generated[row], "stop")
                    continue
                generated[row].append(token)
                if on_token is not None:
                    on_token(row, generated[row])
                if params.stop and cut_at_stop(self._text(generated[row][-48:]), params.stop) is not None:
                    results[row] = (generated[row], "stop")
                elif step + 1 == params.max_new_tokens:
                    results[row] = (generated[row], "length")
                else:
                    keep.append(live)
            if not keep:
                break
            if use_penalty:
                seen[torch.arange(len(rows)), picked] = True
            if len(keep) < len(rows):
                kept = set(keep)
                for live, row in enumerate(rows):
                    if live not in kept:
                        self._forget(row)
                index = torch.tensor(keep, dtype=torch.long)
                picked = picked[index]
                if use_penalty:
                    seen = seen[index]
                rows = [rows[i] for i in keep]
            step_pos = [len(prompts[row]) + len(generated[row]) - 1 for row in rows]
            logits = self._logits(picked.tolist(), step_pos, rows, [True] * len(rows))
        self._clear()
        return [r if r is not None else ([], "length") for r in results]

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- scoring --------------------------------------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval-harness's split (decode.split_pair)."""
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_ids[0]
        return split_pair(self.encode, start, context, continuation)

    def hf_engine(self):
        """The HFEngine that scoring delegates to with score_backend="hf" (built on first use, same adapters)."""
        if self._hf is None:
            from fslm.engine.hf import HFEngine

            self._hf = HFEngine.from_ref(self.model_ref, dtype=self.hf_dtype)
            for name, path in self._adapters.items():
                self._hf.add_adapter(name, path)
        return self._hf

    def score(self, contexts: Sequence[str], continuations: Sequence[str], adapter: str | None = None) -> list[Score]:
        if len(contexts) != len(continuations):
            raise ValueError("contexts and continuations must have the same length")
        self._check_adapter(adapter)
        if self.score_backend == "hf":
            return self.hf_engine().score(contexts, continuations, adapter)
        pairs = fit_pairs([self.encode_pair(c, x) for c, x in zip(contexts, continuations)], self.context_window)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (ctx, _) in enumerate(pairs):
            groups[tuple(ctx)].append(i)
        results: list[Score | None] = [None] * len(pairs)
        wave: list[tuple[tuple[int, ...], list[int]]] = []
        seqs = tokens = longest = 0
        for ctx, members in groups.items():
            span = len(ctx) + max(len(pairs[i][1]) for i in members)
            per_chunk = self._streams(span) - 1  # a context and (some of) its continuations share a wave
            for part in range(0, len(members), per_chunk):
                chunk = members[part : part + per_chunk]
                size = len(ctx) + sum(len(pairs[i][1]) for i in chunk)
                cap = self._streams(max(longest, span))  # every stream of a wave is as long as its longest
                if wave and (seqs + 1 + len(chunk) > cap or tokens + size > self.score_wave_tokens):
                    self._score_wave(wave, pairs, results, adapter)
                    wave, seqs, tokens, longest = [], 0, 0, 0
                wave.append((ctx, chunk))
                seqs += 1 + len(chunk)
                tokens += size
                longest = max(longest, span)
        if wave:
            self._score_wave(wave, pairs, results, adapter)
        return [
            Score(s.logprob, s.n_tokens, s.is_greedy, len(continuations[i]))
            for i, s in enumerate(results)
            if s is not None
        ]

    def _score_wave(self, wave, pairs, results, adapter: str | None) -> None:
        """Each context once (its own sequence, logits at its last token), then every continuation in a sequence
        that starts from a copy of its context's KV cells, with logits at every continuation position."""
        longest = max(len(ctx) + max(len(pairs[i][1]) for i in members) for ctx, members in wave)
        n_seqs = sum(1 + len(members) for _, members in wave)
        self._context(longest, n_seqs)
        self._clear()
        self._use(adapter)
        tokens: list[int] = []
        pos: list[int] = []
        seqs: list[int] = []
        want: list[bool] = []
        group_seq: list[int] = []
        member_seq: dict[int, int] = {}
        next_seq = 0
        for ctx, members in wave:
            group_seq.append(next_seq)
            tokens += ctx
            pos += range(len(ctx))
            seqs += [next_seq] * len(ctx)
            want += [False] * (len(ctx) - 1) + [True]
            next_seq += 1
            for i in members:
                member_seq[i] = next_seq
                next_seq += 1
        first = torch.log_softmax(self._logits(tokens, pos, seqs, want), dim=-1)
        picked: dict[int, list[float]] = {}
        greedy: dict[int, bool] = {}
        mem = self.llama.llama_get_memory(self._ctx)
        targets: list[tuple[int, int]] = []  # (pair index, target token) per continuation position with logits
        tokens, pos, seqs, want = [], [], [], []
        for g, (ctx, members) in enumerate(wave):
            row = first[g]
            best = int(row.argmax())
            for i in members:
                cont = pairs[i][1]
                picked[i] = [float(row[cont[0]])]
                greedy[i] = best == cont[0]
                if len(cont) > 1:
                    self.llama.llama_memory_seq_cp(mem, group_seq[g], member_seq[i], -1, -1)
                    tokens += cont[:-1]
                    pos += range(len(ctx), len(ctx) + len(cont) - 1)
                    seqs += [member_seq[i]] * (len(cont) - 1)
                    want += [True] * (len(cont) - 1)
                    targets += [(i, t) for t in cont[1:]]
        done = 0
        for chunk in self._run(tokens, pos, seqs, want):
            logprobs = torch.log_softmax(torch.from_numpy(chunk), dim=-1)
            best = logprobs.argmax(dim=-1).tolist()
            for row, (i, t) in enumerate(targets[done : done + len(chunk)]):
                picked[i].append(float(logprobs[row, t]))
                greedy[i] = greedy[i] and best[row] == t
            done += len(chunk)
        self.stats.calls += 2 if tokens else 1
        self.stats.forward_tokens += sum(len(ctx) for ctx, _ in wave) + len(tokens)
        self._clear()
        for i, values in picked.items():
            results[i] = Score(float(sum(values)), len(values), greedy[i])
