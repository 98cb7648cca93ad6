"""Token log-probabilities of generated text (OpenAI's `logprobs`): an optional engine capability.

A `LogprobEngine` generates exactly as `generate` / `generate_stream` do (same decode loop, same texts) and also
returns, for each kept token, its log-probability and the `top` most likely tokens at that step. The values are the
model's own distribution (log-softmax of the raw logits, before the repetition penalty, n-gram ban, temperature or
top-p change them, as vLLM reports by default), so they equal what `Engine.score` gives the same tokens.

Both decode loops (decode.decode_batch, LlamaCppEngine._decode) call an `on_step(rows, logprobs, picked)` hook
with the raw log-softmax before the next token is picked; `StepRecorder` is that hook.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fslm.engine import Engine, Generation, GenerationParams

MAX_TOP_LOGPROBS = 20  # OpenAI's chat limit


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # the most likely tokens at this step, best first
    raw: bytes | None = None  # the token's own bytes (part of a UTF-8 character, maybe); None: token.encode()
    top_raw: tuple[bytes, ...] = ()  # the same for each of `top`

    @property
    def utf8(self) -> list[int]:
        """OpenAI's `bytes`: the token's UTF-8 bytes, which joined over tokens give the text even where one character
        spans tokens (then `token` alone shows U+FFFD)."""
        return list(self.raw if self.raw is not None else self.token.encode("utf-8"))


@dataclass(frozen=True)
class LoggedGeneration:
    generation: Generation
    tokens: list[TokenLogprob]  # one per token of generation.text (a stop string's tokens and EOS left out)


@runtime_checkable
class LogprobEngine(Engine, Protocol):
    def generate_logprobs(
        self,
        texts: Sequence[str],
        params: GenerationParams,
        adapter: str | None,
        top: int,
        on_text: Callable[[int, str], None] | None = None,
    ) -> list[LoggedGeneration]: ...


def logprobs_refusal(engine: Engine) -> str | None:
    """Why `engine` cannot return log-probabilities, or None when it can."""
    if isinstance(engine, LogprobEngine):
        return None
    return f"the {type(engine).__name__} engine of {engine.model_ref} does not return token log-probabilities"


class StepRecorder:
    """The decode loops' `on_step` hook: per row of one batch, (token id, its log-probability, top-k (id, lp))."""

    def __init__(self, n_rows: int, top: int):
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top must be 0 to {MAX_TOP_LOGPROBS}, got {top}")
        self.top = top
        self.steps: list[list[tuple[int, float, list[tuple[int, float]]]]] = [[] for _ in range(n_rows)]

    def __call__(self, rows: Sequence[int], logprobs, picked) -> None:
        chosen = logprobs.gather(-1, picked[:, None]).squeeze(-1).tolist()
        if self.top:
            values, ids = logprobs.topk(self.top, dim=-1)
            alts = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        else:
            alts = [[] for _ in rows]
        for live, row in enumerate(rows):
            self.steps[row].append((int(picked[live]), float(chosen[live]), alts[live]))


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, reversed: the printable stand-in character of each byte -> the byte."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


BYTE_DECODER = _byte_decoder()


def token_bytes(tokenizer) -> Callable[[int], bytes]:
    """A function id -> that token's exact bytes for a Hugging Face tokenizer: byte-level BPE pieces (GPT-2, Llama 3,
    SmolLM2, Qwen) mapped back through their byte alphabet, SentencePiece byte-fallback pieces (`<0xE2>`) as their
    byte, other SentencePiece pieces with `▁` as a space; special tokens give b"" (the text leaves them out)."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    byte_level = type(decoder).__name__ == "ByteLevel" or "ByteLevel" in repr(decoder)
    special = set(tokenizer.all_special_ids)

    def of(token_id: int) -> bytes:
        if token_id in special:
            return b""
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if byte_level and all(c in BYTE_DECODER for c in piece):
            return bytes(BYTE_DECODER[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("▁", " ").encode("utf-8")

    return of


def token_logprobs(
    steps: Sequence[tuple[int, float, list[tuple[int, float]]]],
    n_tokens: int,
    text: str,
    decode: Callable[[list[int]], str],
    raw: Callable[[int], bytes] | None = None,
) -> list[TokenLogprob]:
    """The steps behind a Generation's text: its n_tokens kept tokens (an EOS step dropped), then only as many as it
    takes to cover `text` (a stop string's tokens after the cut and stripped trailing whitespace dropped)."""
    kept = list(steps[:n_tokens])
    ids = [s[0] for s in kept]
    keep = 0
    if text:
        keep = len(kept)
        for m in range(1, len(kept) + 1):
            if len(decode(ids[:m]).strip()) >= len(text):
                keep = m
                break
    return [
        TokenLogprob(
            i,
            decode([i]),
            lp,
            tuple((decode([a]), v) for a, v in alts),
            raw(i) if raw else None,
            tuple(raw(a) for a, _ in alts) if raw else (),
        )
        for i, lp, alts in kept[:keep]
    ]


def logged_generations(
    gens: Sequence[Generation], steps: dict[int, list], decode: Callable[[list[int]], str], tokenizer
) -> list[LoggedGeneration]:
    """Each Generation with its tokens' log-probabilities, from the steps its decode loop recorded per row, in the
    engine's own token texts (`decode`) and bytes (`tokenizer`): what both built-in engines return."""
    raw = token_bytes(tokenizer)
    return [
        LoggedGeneration(g, token_logprobs(steps[i], g.tokens_out, g.text, decode, raw)) for i, g in enumerate(gens)
    ]
