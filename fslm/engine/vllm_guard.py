"""fslm's generated-only n-gram loop guard as a vLLM (v1) logits processor, for the vllm engine.

vLLM has no `no_repeat_ngram_size`, and its per-request callables are gone in v1: a logits processor is a class the
`LLM` is built with, which reads each request's setting from `SamplingParams.extra_args`. It bans exactly what
`fslm.engine.decode.banned_ngram_tokens` bans on the HF engine (generated tokens only, never the prompt), so greedy
texts can match. Imported only once vLLM is (it subclasses vLLM's interface).
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from fslm.engine.decode import banned_ngram_tokens

NGRAM_ARG = "fslm_no_repeat_ngram_size"  # the key in SamplingParams.extra_args


class NGramGuard(LogitsProcessor):
    """Sets to -inf every token that would repeat an n-gram of the request's own generated tokens."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.rows: dict[int, tuple[int, list[int]]] = {}  # batch index -> (n, live list of generated token ids)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        n = (sampling_params.extra_args or {}).get(NGRAM_ARG, 0)
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{NGRAM_ARG} must be a non-negative integer, got {n!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # it changes greedy choices: vLLM must run it for temperature 0 too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new_state(params: SamplingParams, _prompt, output_ids: list[int]):
            n = (params.extra_args or {}).get(NGRAM_ARG, 0) if params else 0
            return (n, output_ids) if n else None

        process_dict_updates(self.rows, batch_update, new_state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, (n, generated) in self.rows.items():
            banned = banned_ngram_tokens(generated, n)
            if banned:
                logits[row, sorted(banned)] = -float("inf")
        return logits
