"""`fslm generate`: one model answers a prompt, optionally with a draft model (speculative decoding), prompt lookup,
an amateur model (contrastive decoding) or a small tuned/base pair (proxy-tuning)."""

from __future__ import annotations

import typer
from rich.table import Table

from fslm.cli.common import (
    check_dtype,
    check_engine,
    check_expert_delta,
    check_model,
    check_text,
    default_of,
    engine_option,
    out,
    print_json,
    status,
)
from fslm.collaborate.generate import generate  # for its defaults (no torch)
from fslm.models import DEFAULT_MODEL


def check_options(
    prompt: str,
    model: str,
    draft: str | None,
    amateur: str | None,
    prompt_lookup: int | None,
    draft_tokens: int | None,
    alpha: float,
    stop: list[str],
    dtype: str,
    helper_dtype: str | None,
    expert_delta: str | None = None,
    delta_alpha: float = 1.0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> None:
    """Everything `generate` would only find out after loading a model (or importing torch)."""
    from fslm.collaborate.generate import HELPERS, generation_params
    from fslm.errors import InputError
    from fslm.stack import check_prompt_text

    check_prompt_text(prompt)
    if sum(bool(x) for x in (draft, amateur, prompt_lookup, expert_delta)) > 1:
        raise InputError(f"choose one of {HELPERS}")
    generation_params(1, stop, temperature, top_p, seed)
    if not expert_delta and delta_alpha != default_of(generate, "delta_alpha"):
        raise InputError("--delta-alpha applies to proxy-tuning: add --expert-delta TUNED:BASE")
    if draft_tokens is not None and not (draft or prompt_lookup):
        raise InputError("--draft-tokens applies to speculative decoding: add --draft MODEL or --prompt-lookup N")
    if amateur and temperature > 0:
        raise InputError("--amateur: contrastive decoding is greedy over its scores; leave --temperature at 0")
    if amateur and not 0.0 < alpha <= 1.0:
        raise InputError(f"--alpha must be in (0, 1], got {alpha} (0.1 is the paper's default)")
    for s in stop:
        check_text(s, "--stop string", blank=True)
    check_dtype(dtype)
    if helper_dtype is not None:
        check_dtype(helper_dtype, "--helper-dtype")
    for ref, what in ((model, "--model"), (draft, "--draft"), (amateur, "--amateur")):
        if ref:
            check_model(ref, what)
    if expert_delta:
        check_expert_delta(expert_delta, delta_alpha)


def generate_command(
    prompt: str = typer.Argument(..., help="The instruction (chat-rendered) or, with --raw, the text to continue."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Target/expert model reference."),
    draft: str | None = typer.Option(
        None, "--draft", help="Draft model for speculative decoding (output == --model greedy)."
    ),
    prompt_lookup: int | None = typer.Option(
        None, "--prompt-lookup", min=1, help="Speculate by copying N tokens from the prompt (no draft model)."
    ),
    draft_tokens: int | None = typer.Option(
        None, "--draft-tokens", min=1, help="Tokens the draft proposes per step (default: transformers' adaptive 20)."
    ),
    amateur: str | None = typer.Option(
        None, "--amateur", help="Amateur model for contrastive decoding (same tokenizer as --model)."
    ),
    alpha: float = typer.Option(
        default_of(generate, "alpha"),
        "--alpha",
        help="Contrastive plausibility cut: keep tokens with p >= alpha * max p.",
    ),
    expert_delta: str | None = typer.Option(
        None,
        "--expert-delta",
        metavar="TUNED:BASE",
        help="Proxy-tuning: add alpha x (log p TUNED - log p BASE) to --model's log-probs each step; each "
        "MODEL[+ADAPTER_DIR], same tokenizer as --model.",
    ),
    delta_alpha: float = typer.Option(
        default_of(generate, "delta_alpha"), "--delta-alpha", help="Weight of the --expert-delta shift (0 = --model)."
    ),
    max_new_tokens: int = typer.Option(default_of(generate, "max_new_tokens"), "--max-new-tokens", "-n", min=1),
    temperature: float = typer.Option(
        default_of(generate, "temperature"), "--temperature", help="0 = greedy; > 0 samples (not with --amateur)."
    ),
    top_p: float = typer.Option(
        default_of(generate, "top_p"), "--top-p", help="Nucleus sampling mass (with sampling)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed for sampling (reproducible samples)."),
    stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    dtype: str = typer.Option(
        default_of(generate, "dtype"), "--dtype", help="float32 or bfloat16 for the target/expert."
    ),
    helper_dtype: str | None = typer.Option(
        None, "--helper-dtype", help="dtype of the draft/amateur/--expert-delta models (default: --dtype)."
    ),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    compare: bool = typer.Option(
        False, "--compare", help="Also run plain decoding; report speedup and whether the texts are identical."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
    engine: str = engine_option(
        default_of(generate, "backend"),
        help="Inference engine of --model: hf, llamacpp, vllm or auto (helpers need hf).",
    ),
    no_log: bool = typer.Option(False, "--no-log", help="Do not write this call to the run log (`fslm logs`)."),
) -> None:
    """Generate with --model, sped up by --draft / --prompt-lookup, or changed by --amateur / --expert-delta."""
    from fslm.logs import logged_generate

    check_options(
        prompt,
        model,
        draft,
        amateur,
        prompt_lookup,
        draft_tokens,
        alpha,
        stop,
        dtype,
        helper_dtype,
        expert_delta,
        delta_alpha,
        temperature,
        top_p,
        seed,
    )
    check_engine(engine)
    if engine != "hf" and (draft or amateur or prompt_lookup or expert_delta):
        from fslm.collaborate.generate import HELPERS
        from fslm.errors import InputError

        raise InputError(f"--engine {engine}: {HELPERS} run on transformers' logits (--engine hf)")
    with status("loading models and generating…", enabled=not json_output):
        result = logged_generate(
            prompt,
            log=not no_log,
            model=model,
            draft=draft,
            prompt_lookup=prompt_lookup,
            amateur=amateur,
            alpha=alpha,
            expert_delta=expert_delta,
            delta_alpha=delta_alpha,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
            dtype=dtype,
            helper_dtype=helper_dtype,
            draft_tokens=draft_tokens,
            raw=raw,
            compare=compare,
            backend=engine,
        )
    if json_output:
        print_json(result.to_dict())
        return
    out.print(result.text, highlight=False, markup=False)
    table = Table(show_header=False, box=None)
    table.add_row("mode", result.mode + (f" ({result.helper})" if result.helper else ""))
    table.add_row("tokens", f"{result.tokens_in} in · {result.tokens_out} out · {result.tokens_per_s:.1f} tok/s")
    if result.acceptance is not None:
        table.add_row("acceptance", f"{result.acceptance:.1%} ({result.accepted}/{result.drafted} drafted tokens)")
    if result.baseline:
        b = result.baseline
        if "speedup" in b:
            table.add_row("vs plain greedy", f"{b['speedup']:.2f}x, identical output: {b['identical']}")
        else:
            table.add_row("plain decoding", b["text"])
    out.print(table)
