"""Per-row LoRA for a decode batch whose rows run different adapters, without PEFT's per-layer loop over them.

PEFT's mixed-batch path (`adapter_names=`) does, in every LoRA layer of every forward, a Python scan of the row names,
then per adapter an index gather of its rows, two small matmuls and an index scatter back. At decode (one token per
row) that dispatch overhead dominates: a batch-3 step with three adapters measured 165.9 ms against 81.4 ms with one
(benchmarks/results/engine/mixed.md). Here the rows' adapter runs are computed once per change of the live rows, each
layer's A and B (B with the scaling folded in) are kept transposed once per batch, and a forward hook adds
`x[s:e] @ A @ B` to each run's slice of the layer's output (views, no gather), while PEFT's own adapters are off.

Only plain LoRA on `nn.Linear` layers: DoRA and other variants, LoRA biases and other layer kinds make `RowLoRA.build`
return None, and the caller keeps PEFT's path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


def _runs(names: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start, end, name) of each run of equal adjacent names."""
    runs: list[tuple[int, int, str]] = []
    for i, name in enumerate(names):
        if runs and runs[-1][2] == name:
            runs[-1] = (runs[-1][0], i + 1, name)
        else:
            runs.append((i, i + 1, name))
    return runs


class RowLoRA:
    """Use as `with RowLoRA.build(model, names) as rows:`; call `rows.select(live)` when rows leave the batch."""

    def __init__(self, model, names: Sequence[str], layers: list[tuple[torch.nn.Module, dict]]):
        self.model = model
        self.names = list(names)
        self._layers = layers  # (LoRA layer, {adapter: (A^T [in, r], (B * scaling)^T [r, out])})
        self._runs = _runs(self.names)
        self._stack: contextlib.ExitStack | None = None

    @classmethod
    def build(cls, model, names: Sequence[str]) -> RowLoRA | None:
        """The per-row LoRA of `model` (a PeftModel) for rows named `names`, or None where it does not apply."""
        try:
            from peft.tuners.lora import LoraLayer
        except ImportError:
            return None
        if not hasattr(model, "disable_adapter"):
            return None
        wanted = set(names) - {BASE}
        layers = []
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            present = [n for n in wanted if n in module.lora_A]
            if not present:
                continue
            if not isinstance(module.get_base_layer(), torch.nn.Linear) or getattr(module, "merged", False):
                return None
            weights = {}
            for n in present:
                if n in getattr(module, "lora_variant", {}) or module.use_dora.get(n) or module.lora_bias.get(n):
                    return None
                a, b = module.lora_A[n], module.lora_B[n]
                if not isinstance(a, torch.nn.Linear) or not isinstance(b, torch.nn.Linear):
                    return None
                with torch.no_grad():  # inference copies: no autograd graph behind them
                    weights[n] = (a.weight.t().contiguous(), (b.weight * module.scaling[n]).t().contiguous())
            layers.append((module, weights))
        return cls(model, names, layers)

    def select(self, rows: Sequence[int]) -> None:
        """The live rows, as indices into the names given at build (in batch order)."""
        self._runs = _runs([self.names[r] for r in rows])

    def _hook(self, weights: dict):
        def add_rows(module, args, output):
            x = args[0]
            for start, end, name in self._runs:
                pair = weights.get(name)
                if pair is not None:
                    output[start:end].add_(x[start:end].to(pair[0].dtype) @ pair[0] @ pair[1])
            return output

        return add_rows

    def __enter__(self) -> RowLoRA:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.model.disable_adapter())
        for module, weights in self._layers:
            self._stack.callback(module.register_forward_hook(self._hook(weights)).remove)
        return self

    def __exit__(self, *exc) -> None:
        assert self._stack is not None
        self._stack.close()
        self._stack = None
