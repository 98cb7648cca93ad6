"""Python twin of `fslm generate`: one prompt, one model, optionally helped by a draft model, prompt lookup or an
amateur model (contrastive decoding)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from fslm.engine import Engine, GenerationParams, check_backend, load_engine
from fslm.errors import InputError
from fslm.models import DEFAULT_MODEL


@dataclass
class GenerateResult:
    text: str
    model: str
    mode: str  # greedy | speculative | prompt-lookup | contrastive
    helper: str | None  # the draft or amateur model
    tokens_in: int
    tokens_out: int
    seconds: float
    acceptance: float | None = None
    drafted: int | None = None
    accepted: int | None = None
    baseline: dict | None = None  # plain greedy of the same model on the same input (with compare=True)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_out / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["tokens_per_s"] = round(self.tokens_per_s, 3)
        out["seconds"] = round(self.seconds, 4)
        return out


def render(engine: Engine, prompt: str, raw: bool) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("empty prompt: give the text to continue or the instruction to answer")
    return prompt if raw else engine.render_chat([{"role": "user", "content": prompt}])


def generate(
    prompt: str,
    *,
    model: str = DEFAULT_MODEL,
    draft: str | None = None,
    prompt_lookup: int | None = None,
    amateur: str | None = None,
    alpha: float = 0.1,
    amateur_temperature: float = 1.0,
    max_new_tokens: int = 128,
    stop: Sequence[str] = (),
    dtype: str = "float32",
    helper_dtype: str | None = None,
    draft_tokens: int | None = None,
    raw: bool = False,
    compare: bool = False,
    engines: dict[str, Engine] | None = None,
    backend: str = "hf",
) -> GenerateResult:
    """Generate greedily with `model`; `draft`/`prompt_lookup` speed it up, `amateur` changes it (contrastive).

    compare=True also runs plain greedy decoding on the same input and records its text, speed and (for speculative
    decoding) whether the outputs are identical. `engines` maps references to already loaded engines (tests, reuse).
    backend: the target's inference engine; drafts and amateurs work on transformers' logits, so they need "hf".
    """
    helpers = [x for x in (draft, amateur) if x] + (["prompt-lookup"] if prompt_lookup else [])
    if len(helpers) > 1:
        raise InputError("choose one of --draft, --prompt-lookup and --amateur")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_backend(backend)
    if helpers and backend != "hf":
        raise InputError(
            f"--engine {backend}: --draft, --prompt-lookup and --amateur run on transformers' logits (--engine hf)"
        )
    cache = dict(engines or {})

    def get(ref: str, kind: str) -> Engine:
        if ref not in cache:
            if kind == "helper":
                cache[ref] = load_engine(ref, dtype=helper_dtype or dtype)
            else:
                cache[ref] = load_engine(ref, dtype=dtype, backend=backend)
        return cache[ref]

    target = get(model, "target")
    text = render(target, prompt, raw)
    params = GenerationParams(max_new_tokens=max_new_tokens, stop=tuple(stop))
    baseline = None
    if draft or prompt_lookup:
        from fslm.collaborate.speculative import AssistedEngine, compare_with_plain

        assisted = AssistedEngine(
            target,
            get(draft, "helper") if draft else None,
            prompt_lookup=prompt_lookup,  # type: ignore[arg-type]
            draft_tokens=draft_tokens,
        )
        if compare:
            report, plain, fast = compare_with_plain(assisted, [text], params)
            gen, baseline = fast[0], {**report.to_dict(), "text": plain[0].text}
        else:
            gen = assisted.generate([text], params)[0]
        return GenerateResult(
            gen.text,
            model,
            "speculative" if draft else "prompt-lookup",
            assisted.drafter,
            gen.tokens_in,
            gen.tokens_out,
            gen.seconds,
            round(gen.acceptance, 4),
            gen.drafted,
            gen.accepted,
            baseline,
        )
    if compare:
        plain = target.generate([text], params)[0]
        baseline = {"text": plain.text, "tokens_out": plain.tokens_out, "seconds": round(plain.seconds, 4)}
    if amateur:
        from fslm.collaborate.contrastive import ContrastiveParams, contrastive_generate

        cd = ContrastiveParams(alpha=alpha, amateur_temperature=amateur_temperature)
        gen = contrastive_generate(target, get(amateur, "helper"), [text], params, cd)[0]  # type: ignore[arg-type]
        return GenerateResult(
            gen.text, model, "contrastive", amateur, gen.tokens_in, gen.tokens_out, gen.seconds, baseline=baseline
        )
    gen = target.generate([text], params)[0]
    return GenerateResult(gen.text, model, "greedy", None, gen.tokens_in, gen.tokens_out, gen.seconds)
