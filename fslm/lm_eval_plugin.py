"""fslm as an lm-evaluation-harness model: `--model fslm --model_args model=REF` or `stack=PATH|default`.

lm-eval 0.4.13 does not read the `lm_eval.models` entry point that pyproject declares, so importing this module
registers the class with `register_model("fslm")`. From a shell, use the wrapper, which registers and then runs
lm-eval's own CLI with our task folder on the include path:

    python -m fslm.lm_eval_plugin --model fslm --model_args model=smollm2-135m --tasks fslm_arc_easy --limit 50

Model mode is lm-eval's plain causal-LM contract (raw contexts, summed logprobs). Stack mode: each distinct
context is the stack's prompt; stages 1..N-1 run once per context, and the continuation (leading spaces removed)
is scored as the answer stage's reply, as in `fslm eval --stack` (docs/evaluate.md); a stack whose final `score`
stage scores raw contexts from the prompt alone (the packaged default's `pick`) scores each request with that stage's
adapter as it is. lm-eval's requests carry no item
ids, so `fslm eval`'s id check cannot run here; instead a retrieve stage drops every passage that shares a run of 8
words with the request's context (`Stack.run_batch(decontaminate=True)`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import resources

from lm_eval.api.model import LM
from lm_eval.api.registry import model_registry, register_model

from fslm.engine import GenerationParams
from fslm.errors import InputError
from fslm.evaluate.scoring import cut_at
from fslm.evaluate.systems import ModelSystem, StackSystem, load_system

_CHUNK = 256  # requests per engine call (the engine batches further inside)


def _flag(value: object) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


class FslmLM(LM):
    """lm-eval LM over an fslm system (a model alone, or a stack with or without its adapters)."""

    def __init__(
        self,
        model: str | None = None,
        stack: str | None = None,
        no_adapters: object = False,
        dtype: str | None = None,
        system: ModelSystem | StackSystem | None = None,
        **_: object,
    ):
        super().__init__()
        self.system = system or load_system(model=model, stack=stack, adapters=not _flag(no_adapters), dtype=dtype)
        self.engine = self.system.engine

    @property
    def stack(self):
        return self.system.stack if isinstance(self.system, StackSystem) else None

    # ---- loglikelihood -------------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        if self.stack is None:
            return self._score([c for c, _ in pairs], [x for _, x in pairs])
        return self._stack_loglikelihood(pairs)

    def _score(self, contexts: Sequence[str], continuations: Sequence[str], adapter: str | None = None, engine=None):
        out: list[tuple[float, bool]] = []
        for start in range(0, len(contexts), _CHUNK):
            scores = (engine or self.engine).score(
                contexts[start : start + _CHUNK], continuations[start : start + _CHUNK], adapter=adapter
            )
            out.extend((s.logprob, s.is_greedy) for s in scores)
        return out

    def _answer_inputs(self, contexts: Sequence[str]) -> dict[str, str]:
        """Run stages 1..N-1 once per distinct context; the answer stage's rendered input for each."""
        stack = self.stack
        unique = list(dict.fromkeys(contexts))
        early = len(stack.config.stages) - 1
        inputs: dict[str, str] = {}
        for start in range(0, len(unique), 32):
            batch = unique[start : start + 32]
            results = stack.run_batch([c.strip() or c for c in batch], stages=early, decontaminate=True)
            inputs.update({c: stack.answer_input(r) for c, r in zip(batch, results, strict=True)})
        return inputs

    def _raw_scorer(self):
        """A final `score` stage in raw format that reads only the prompt (the default stack's `pick`): lm-eval's
        loglikelihood requests are exactly what it scores (a raw context, then an option), so they go to it as they
        are, with its adapter, instead of through the stages that answer free-form prompts."""
        for stage in self.stack.config.stages:
            if stage.kind == "score" and stage.final and stage.score.format == "raw" and stage.sees == ["prompt"]:
                return stage
        return None

    def _stack_loglikelihood(self, pairs):
        scorer = self._raw_scorer()
        if scorer is not None:
            contexts, continuations = [c for c, _ in pairs], [x for _, x in pairs]
            return self._score(contexts, continuations, self.stack.adapter_for(scorer), self.stack.engine_for(scorer))
        inputs = self._answer_inputs([c for c, _ in pairs])
        adapter = self.stack.adapter_for(self.stack.config.stages[-1])
        return self._score([inputs[c] for c, _ in pairs], [x.lstrip() or x for _, x in pairs], adapter)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total logprob of each text; texts longer than the context window are scored in disjoint windows.
        A stack scores the text with its answer stage's adapter and no stage context."""
        adapter = self.stack.adapter_for(self.stack.config.stages[-1]) if self.stack is not None else None
        out = []
        for (text,) in (tuple(r.args) for r in requests):
            out.append(sum(lp for lp, _ in self._score(*self._windows(text), adapter)))
        return out

    def _windows(self, text: str) -> tuple[list[str], list[str]]:
        window = self.engine.context_window
        if self.engine.count_tokens(text) + 1 <= window:
            return [""], [text]
        tokenizer = getattr(self.engine, "tokenizer", None)
        if tokenizer is None:
            raise InputError(f"a text of {self.engine.count_tokens(text)} tokens exceeds the context window ({window})")
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        tokens = self.engine.encode(text)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        contexts, continuations = [], []
        for pair in get_rolling_token_windows(
            token_list=tokens, prefix_token=prefix, max_seq_len=window - 1, context_len=1
        ):
            ctx, pred = make_disjoint_window(pair)
            ctx = [t for t in ctx if t != prefix] if ctx == [prefix] else ctx
            contexts.append(tokenizer.decode(ctx) if ctx else "")
            continuations.append(tokenizer.decode(pred))
        return contexts, continuations

    # ---- generation ----------------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        reqs = [tuple(r.args) for r in requests]
        groups: dict[tuple, list[int]] = {}
        for i, (_, kwargs) in enumerate(reqs):
            groups.setdefault(self._params_key(kwargs), []).append(i)
        out: list[str] = [""] * len(reqs)
        for (max_new, temperature, stops), idx in groups.items():
            contexts = [reqs[i][0] for i in idx]
            if self.stack is None:
                params = GenerationParams(max_new_tokens=max_new, temperature=temperature, stop=stops)
                texts = [g.text for g in self.engine.generate(contexts, params)]
            else:
                texts = [r.answer for r in self.stack.run_batch([c.strip() or c for c in contexts], decontaminate=True)]
            for i, text in zip(idx, texts, strict=True):
                out[i] = cut_at(text, stops)
        return out

    @staticmethod
    def _params_key(kwargs: dict) -> tuple[int, float, tuple[str, ...]]:
        kwargs = dict(kwargs or {})
        until = kwargs.get("until") or ()
        stops = (until,) if isinstance(until, str) else tuple(until)
        sample = _flag(kwargs.get("do_sample", False))
        temperature = float(kwargs.get("temperature", 0.0) or 0.0) if sample else 0.0
        return int(kwargs.get("max_gen_toks", 256)), temperature, stops

    @property
    def tokenizer_name(self) -> str:
        return str(self.engine.model_ref)


if "fslm" not in model_registry:
    register_model("fslm")(FslmLM)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m fslm.lm_eval_plugin ...`: lm-eval's CLI with the fslm model registered and our tasks included."""
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in args:
        args += ["--include_path", str(str(resources.files("fslm") / "lm_eval_tasks"))]
    if _only_fslm_tasks(args):
        _skip_builtin_task_index()
    sys.argv = ["lm_eval", *args]
    cli_evaluate()


def _only_fslm_tasks(args: list[str]) -> bool:
    for flag in ("--tasks", "-t"):
        if flag in args and args.index(flag) + 1 < len(args):
            names = args[args.index(flag) + 1].split(",")
            return all(n == "fslm" or n.startswith("fslm_") for n in names)
    return False


def _skip_builtin_task_index() -> None:
    """Only fslm tasks asked for: don't index lm-eval's ~14,000 built-in task files (over a minute here)."""
    import lm_eval.tasks

    base = lm_eval.tasks.TaskManager

    class OwnTasksOnly(base):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw):
            kw.setdefault("include_defaults", False)
            super().__init__(*a, **kw)

    lm_eval.tasks.TaskManager = OwnTasksOnly


if __name__ == "__main__":
    main()
