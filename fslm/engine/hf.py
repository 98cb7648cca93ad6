"""transformers + PEFT backend: one base model in memory, LoRA adapters switched per call."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from fslm.cpu import apply_threads
from fslm.engine import EngineStats, Generation, GenerationParams
from fslm.engine.decode import (
    Prefilled,
    cut_at_stop,
    decode_batch,
    join_prefilled,
    prefill,
    render_chat_text,
    supports_logits_to_keep,
)
from fslm.engine.hf_score import HFScoring
from fslm.engine.logprobs import LoggedGeneration, StepRecorder, logged_generations
from fslm.engine.prefix import PrefixStore, count_reuse
from fslm.engine.rowlora import RowLoRA
from fslm.engine.stepping import LogitsSession
from fslm.engine.streaming import OnText, RowStreams
from fslm.errors import ConfigError, InputError, ModelFileError
from fslm.models import LoadedModel, check_adapter_folder, load_model


class HFEngine(HFScoring):
    def __init__(
        self,
        loaded: LoadedModel,
        *,
        batch_size: int = 16,
        score_batch_tokens: int = 4096,
        score_logits_bytes: int = 1 << 30,
        prefix_cache_tokens: int = 2048,
    ):
        apply_threads()  # all cores on an idle machine, fewer when others are busy (FSLM_THREADS wins)
        self.model_ref = loaded.source.ref
        self.base = loaded.model
        self.model = loaded.model  # becomes a PeftModel once an adapter is added
        self.tokenizer = loaded.tokenizer
        self.batch_size = batch_size
        self.score_batch_tokens = score_batch_tokens
        # fp32 logits of one scoring batch: rows x kept positions x vocabulary x 4 bytes. Token counts alone are not a
        # bound: at 150k-260k vocabularies (Qwen2.5, Gemma 3) 4096 tokens of logits are 2.5-4.3 GB.
        self.score_logits_bytes = score_logits_bytes
        self.stats = EngineStats()
        # KV states of stage heads (template + instruction) reused across rows and calls; 0 turns it off. SmolLM2-135M
        # keeps ~46 KB per token in fp32, so the default budget holds ~94 MB.
        self.prefixes = PrefixStore(budget_tokens=prefix_cache_tokens)
        self._adapters: dict[str, str] = {}
        self._logits_to_keep: bool | None = None
        self._packing: bool | None = None  # whether scoring may pack rows: probed on the first score call
        self.context_window = int(getattr(self.base.config, "max_position_embeddings", 2048) or 2048)
        self._params = sum(p.numel() for p in self.base.parameters())
        eos = self.base.generation_config.eos_token_id if self.base.generation_config else None
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        self.eos_ids = sorted({i for i in ids if i is not None})

    @classmethod
    def from_ref(cls, model_ref: str, *, dtype: str = "float32", **kwargs) -> HFEngine:
        return cls(load_model(model_ref, dtype=dtype), **kwargs)

    @property
    def params(self) -> int:
        return self._params

    @property
    def dtype(self) -> str:
        return str(next(self.base.parameters()).dtype).removeprefix("torch.")

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    # ---- adapters -------------------------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if name in self._adapters:
            if self._adapters[name] == str(path):
                return
            raise ConfigError(f"adapter name {name!r} is already loaded from {self._adapters[name]}")
        try:
            check_adapter_folder(Path(path))  # safetensors only, sound header, JSON config: before PEFT reads it
        except ModelFileError as err:
            raise ConfigError(f"cannot load LoRA adapter {name!r}: {err}") from None
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=name, is_trainable=False)
        except Exception as err:  # noqa: BLE001 - PEFT raises many types for a config it cannot apply to this model
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"cannot load LoRA adapter {name!r} from {path}: {type(err).__name__}: {first}") from None
        self.model.eval()
        self._adapters[name] = str(path)
        self.prefixes.clear()  # PEFT wrapped the model: states computed before are recomputed, not trusted

    def adapters(self) -> list[str]:
        return list(self._adapters)

    @contextlib.contextmanager
    def _active(self, adapter: str | None) -> Iterator[torch.nn.Module]:
        if adapter is not None and adapter not in self._adapters:
            raise ConfigError(f"adapter {adapter!r} is not loaded; loaded: {self.adapters() or 'none'}")
        if not self._adapters:
            yield self.model
        elif adapter is None:
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(adapter)
            yield self.model

    # ---- transformers access: the TransformersEngine capability (fslm.engine), public on purpose -------------------
    # For code above the engine that drives the model itself (assisted and contrastive decoding, LoRA training).
    @property
    def base_model(self) -> torch.nn.Module:
        """The bare transformers model, without adapters (PEFT wraps it in `hf_model` once an adapter is loaded).
        Code given the model may change it (training wraps it in LoRA layers): stored prefix states are dropped."""
        self.prefixes.clear()
        return self.base

    def hf_model(self, adapter: str | None = None) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """The model to call with `adapter` active (None: adapters off) inside the `with` block; not counted in
        `stats`, the caller counts its own calls. Stored prefix states are dropped, as for `base_model`."""
        self.prefixes.clear()
        return self._active(adapter)

    # ---- step-wise logits: the StepLogitsEngine capability (fslm.engine.stepping) ----------------------------------
    def logits_session(self, prompts: Sequence[Sequence[int]], adapter: str | None = None) -> LogitsSession:
        """A KV-cached session over these token-id prompts with `adapter` active for its forwards (None: off)."""
        if adapter is not None and adapter not in self._adapters:
            raise ConfigError(f"adapter {adapter!r} is not loaded; loaded: {self.adapters() or 'none'}")
        for i, ids in enumerate(prompts):
            if len(ids) >= self.context_window:
                raise InputError(
                    f"prompt {i} has {len(ids)} tokens: no room left in the context window of {self.model_ref}"
                )

        def forward(**inputs):
            with self._active(adapter) as model:
                return model(**inputs)

        return LogitsSession(
            forward,
            prompts,
            pad_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0],
            device=self.device,
            stats=self.stats,
            keep_last=self._keep_logits(1),
        )

    # ---- text -----------------------------------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return render_chat_text(self.tokenizer, messages)

    def encode(self, text: str) -> list[int]:
        # Chat-rendered texts already carry their special tokens.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    # ---- generation -----------------------------------------------------------------------------------------------
    def generate(self, texts: Sequence[str], params: GenerationParams, adapter: str | None = None) -> list[Generation]:
        return self._generate(texts, params, adapter, None)

    def generate_stream(
        self, texts: Sequence[str], params: GenerationParams, adapter: str | None, on_text: OnText
    ) -> list[Generation]:
        """`generate`, calling `on_text(row, piece)` as each row's text grows token by token; the pieces of a row join
        to its Generation.text (fslm.engine.streaming). Same decode loop, so the same texts."""
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

    def generate_mixed(self, rows: Sequence[tuple[str, GenerationParams, str | None]]) -> list[Generation]:
        """One Generation per (text, params, adapter) row: rows of different stages share batches. Rows whose sampling
        settings agree (all but max_new_tokens and stop) decode together, each under its own adapter (RowLoRA: each
        run of rows gets its own LoRA delta in every layer; PEFT's per-row `adapter_names` where RowLoRA does not
        apply), so one forward pass streams the base weights for all of them. A batch of one adapter
        runs as `generate` does (with stage-head reuse); the texts equal per-adapter `generate` calls."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (_, params, _) in enumerate(rows):
            groups[_sampling(params)].append(i)
        results: list[Generation | None] = [None] * len(rows)
        for members in groups.values():
            made = self._generate(
                [rows[i][0] for i in members],
                rows[members[0]][1],
                [rows[i][2] for i in members],
                None,
                per_row=[rows[i][1] for i in members],
            )
            for i, gen in zip(members, made, strict=True):
                results[i] = gen
        return [r for r in results if r is not None]

    def _generate(
        self,
        texts: Sequence[str],
        params: GenerationParams,
        adapter: str | None | list[str | None],
        on_text: OnText | None,
        steps: dict[int, list] | None = None,
        top: int = 0,
        per_row: Sequence[GenerationParams] | None = None,
    ) -> list[Generation]:
        adapters = list(adapter) if isinstance(adapter, list) else [adapter] * len(texts)
        for name in set(adapters) - {None}:
            if name not in self._adapters:
                raise ConfigError(f"adapter {name!r} is not loaded; loaded: {self.adapters() or 'none'}")
        own = list(per_row) if per_row is not None else [params] * len(texts)
        encoded = [self.encode(t) for t in texts]
        for i, ids in enumerate(encoded):
            if len(ids) + own[i].max_new_tokens > self.context_window:
                raise InputError(
                    f"input {i} has {len(ids)} tokens; with max_new_tokens={own[i].max_new_tokens} it exceeds the "
                    f"context window of {self.context_window} tokens of {self.model_ref}"
                )
        streams = None if on_text is None else RowStreams(len(texts), self._text, params.stop, on_text)
        # Rows of one token cap together (a batch decodes until its longest cap), then of one adapter (contiguous rows
        # for the per-row LoRA, fslm/engine/rowlora.py), then by length (less padding)
        order = sorted(range(len(texts)), key=lambda i: (own[i].max_new_tokens, adapters[i] or "", len(encoded[i])))
        results: list[Generation | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            t0 = time.perf_counter()
            on_token = None if streams is None else streams.token_callback(batch)
            recorder = None if steps is None else StepRecorder(len(batch), top)
            outs = self._generate_batch(
                [encoded[i] for i in batch],
                params,
                [adapters[i] for i in batch],
                on_token,
                recorder,
                per_row=None if per_row is None else [own[i] for i in batch],
            )
            seconds = (time.perf_counter() - t0) / len(batch)
            for k, (i, (text, n_out, reason)) in enumerate(zip(batch, outs, strict=True)):
                results[i] = Generation(text, len(encoded[i]), n_out, seconds, reason)
                if streams is not None:
                    streams.finish(i, text)
                if recorder is not None and steps is not None:
                    steps[i] = recorder.steps[k]
        return [r for r in results if r is not None]

    def _text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _generate_batch(
        self,
        batch: list[list[int]],
        params: GenerationParams,
        adapters: list[str | None],
        on_token=None,
        on_step=None,
        per_row: list[GenerationParams] | None = None,
    ):
        own = per_row if per_row is not None else [params] * len(batch)
        settings = {
            "pad_id": self.tokenizer.pad_token_id,
            "eos_ids": self.eos_ids,
            "decode_text": lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
            "on_token": on_token,
            "on_step": on_step,
            "limits": None if per_row is None else [p.max_new_tokens for p in own],
            "stops": None if per_row is None else [p.stop for p in own],
        }
        computed = sum(len(ids) for ids in batch)  # prompt tokens this batch runs through the model
        if len(set(adapters)) == 1:
            with self._active(adapters[0]) as model:
                prefix = self.prefixes.lookup(batch, adapters[0], lambda tokens: self._prefix_state(model, tokens))
                decoded = decode_batch(model, batch, params, prefix=prefix, **settings)
            computed -= count_reuse(self.stats, prefix, len(batch), self.prefixes.last_hit)
        else:  # each adapter's rows prefill apart (with their stage-head reuse), then all decode as one batch
            start, skipped = self._prefill_apart(batch, adapters)
            computed -= skipped
            if start is None:  # caches that cannot be joined: decode_batch prefills the batch again, as one
                computed += sum(len(ids) for ids in batch)
            names = [a if a is not None else "__base__" for a in adapters]
            rows = RowLoRA.build(self.model, names) if start is not None else None
            if rows is None:  # PEFT's own per-row path
                decoded = decode_batch(self.model, batch, params, adapter_names=names, start=start, **settings)
            else:
                with rows:
                    decoded = decode_batch(self.model, batch, params, start=start, row_adapters=rows, **settings)
        self.stats.calls += 1
        self.stats.forward_tokens += computed + sum(len(d.tokens) for d in decoded)
        results = []
        for d, p in zip(decoded, own, strict=True):
            text, reason = self.tokenizer.decode(d.tokens, skip_special_tokens=True), d.reason
            cut = cut_at_stop(text, p.stop)
            if cut is not None:
                text, reason = cut, "stop"
            results.append((text.strip(), len(d.tokens), reason))
            self.stats.generated_tokens += len(d.tokens)
        return results

    def _prefill_apart(self, batch: list[list[int]], adapters: list[str | None]) -> tuple[Prefilled | None, int]:
        """The batch prefilled one adapter at a time and joined (decode.join_prefilled; None when the caches cannot
        be joined), and the prompt tokens stage-head reuse saved. Prefill costs about the same apart (it is
        compute-bound) and keeps each adapter's stored heads; the decode steps are what the adapters then share."""
        parts, skipped = [], 0
        for name in dict.fromkeys(adapters):
            rows = [i for i, a in enumerate(adapters) if a == name]
            sub = [batch[i] for i in rows]
            with self._active(name) as model:
                prefix = self.prefixes.lookup(sub, name, lambda tokens, model=model: self._prefix_state(model, tokens))
                parts.append((rows, prefill(model, sub, pad_id=self.tokenizer.pad_token_id, prefix=prefix)))
            skipped += count_reuse(self.stats, prefix, len(sub), self.prefixes.last_hit)
        return join_prefilled(parts), skipped

    @torch.inference_mode()
    def _prefix_state(self, model, tokens: list[int]):
        """The KV cache of `tokens` (batch 1) under the active adapter: a stage head, computed once."""
        out = model(input_ids=torch.tensor([tokens], device=self.device), use_cache=True, **self._keep_logits(1))
        self.stats.calls += 1
        self.stats.forward_tokens += len(tokens)
        return out.past_key_values

    def _keep_logits(self, n: int) -> dict:
        """forward() kwargs that compute logits for the last `n` positions only, where the model supports it."""
        if self._logits_to_keep is None:
            self._logits_to_keep = supports_logits_to_keep(self.model)
        return {"logits_to_keep": n} if self._logits_to_keep else {}


def _sampling(params: GenerationParams) -> tuple:
    """The settings rows must share to decode in one batch: all but the per-row max_new_tokens and stop strings."""
    return (params.temperature, params.top_p, params.repetition_penalty, params.seed, params.no_repeat_ngram_size)
