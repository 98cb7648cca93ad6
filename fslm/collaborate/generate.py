"""Python twin of `fslm generate`: one prompt, one model, optionally helped by a draft model, prompt lookup, an
amateur model (contrastive decoding) or a small tuned/base pair (proxy-tuning)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from fslm.collaborate.proxy_params import ProxyTuneParams, parse_expert_delta
from fslm.engine import Engine, GenerationParams, check_backend, load_engine
from fslm.errors import InputError
from fslm.models import DEFAULT_MODEL


@dataclass
class GenerateResult:
    text: str
    model: str
    mode: str  # greedy | sampled | speculative | prompt-lookup | contrastive | proxy-tuned
    helper: str | None  # the draft or amateur model, or proxy-tuning's TUNED:BASE
    tokens_in: int
    tokens_out: int
    seconds: float
    acceptance: float | None = None
    drafted: int | None = None
    accepted: int | None = None
    baseline: dict | None = None  # plain decoding of the same model on the same input (with compare=True)

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
    expert_delta: str | None = None,
    delta_alpha: float = 1.0,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    dtype: str = "float32",
    helper_dtype: str | None = None,
    draft_tokens: int | None = None,
    raw: bool = False,
    compare: bool = False,
    engines: dict[str, Engine] | None = None,
    backend: str = "hf",
) -> GenerateResult:
    """Generate with `model` (greedy, or sampled with temperature > 0); `draft`/`prompt_lookup` speed it up,
    `amateur` (contrastive) and `expert_delta` ("TUNED:BASE", each MODEL[+ADAPTER_DIR]: proxy-tuning, weighted by
    `delta_alpha`) change it.

    compare=True also runs plain decoding on the same input and records its text, speed and (for speculative
    decoding) whether the outputs are identical. `engines` maps references to already loaded engines (tests, reuse).
    backend: the target's inference engine; drafts, amateurs and proxies work on transformers' logits: "hf".
    """
    helpers = [x for x in (draft, amateur, expert_delta) if x] + (["prompt-lookup"] if prompt_lookup else [])
    if len(helpers) > 1:
        raise InputError(f"choose one of {HELPERS}")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    params = generation_params(max_new_tokens, stop, temperature, top_p, seed)
    proxy = ProxyTuneParams(alpha=delta_alpha) if expert_delta else None
    pair = parse_expert_delta(expert_delta) if expert_delta else None
    check_backend(backend)
    if helpers and backend != "hf":
        raise InputError(f"--engine {backend}: {HELPERS} run on transformers' logits (--engine hf)")
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
    if pair is not None and proxy is not None:
        from fslm.collaborate.proxy import load_expert, proxy_generate

        tuned, base = (load_expert(ref, lambda m: get(m, "helper")) for ref in pair)
        gen = proxy_generate(target, tuned, base, [text], params, proxy)[0]
        helper = f"{pair[0]}:{pair[1]} (alpha {proxy.alpha:g})"
        return GenerateResult(
            gen.text, model, "proxy-tuned", helper, gen.tokens_in, gen.tokens_out, gen.seconds, baseline=baseline
        )
    if amateur:
        from fslm.collaborate.contrastive import ContrastiveParams, contrastive_generate

        cd = ContrastiveParams(alpha=alpha, amateur_temperature=amateur_temperature)
        gen = contrastive_generate(target, get(amateur, "helper"), [text], params, cd)[0]  # type: ignore[arg-type]
        return GenerateResult(
            gen.text, model, "contrastive", amateur, gen.tokens_in, gen.tokens_out, gen.seconds, baseline=baseline
        )
    gen = target.generate([text], params)[0]
    mode = "sampled" if params.temperature > 0 else "greedy"
    return GenerateResult(gen.text, model, mode, None, gen.tokens_in, gen.tokens_out, gen.seconds)


HELPERS = "--draft, --prompt-lookup, --amateur and --expert-delta"


def generation_params(
    max_new_tokens: int, stop: Sequence[str], temperature: float, top_p: float, seed: int | None
) -> GenerationParams:
    """GenerationParams from the verb's options; an out-of-range value is one InputError naming the option."""
    from pydantic import ValidationError

    try:
        return GenerationParams(
            max_new_tokens=max_new_tokens, stop=tuple(stop), temperature=temperature, top_p=top_p, seed=seed
        )
    except ValidationError as err:
        first = err.errors()[0]
        name = "--" + str(first["loc"][0]).replace("_", "-") if first.get("loc") else "generation option"
        raise InputError(f"{name}: {first['msg']} (got {first.get('input')!r})") from None
