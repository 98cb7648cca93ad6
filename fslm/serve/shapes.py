"""The two OpenAI response shapes fslm serves, chat (`chat.completion[.chunk]`) and text (`text_completion`), built
from the same pieces: choices of (text, finish_reason), usage, and fslm's extra fields (`fslm_trace`, `fslm_cost`,
`fslm_event`). Extra fields sit beside the standard ones, so an OpenAI client parses every object unchanged."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fslm.engine.logprobs import TokenLogprob
from fslm.version import __version__ as FSLM_VERSION


@dataclass(frozen=True)
class Shape:
    """`chat=True`: chat.completion objects (message / delta); False: text_completion objects (text)."""

    chat: bool

    @property
    def prefix(self) -> str:
        return "chatcmpl-" if self.chat else "cmpl-"

    def _base(self, cid: str, model: str, obj: str) -> dict[str, Any]:
        return {
            "id": cid,
            "object": obj,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": f"fslm-{FSLM_VERSION}",
        }

    def completion(
        self,
        cid: str,
        model: str,
        choices: list[tuple[str, str]],
        usage: dict,
        logprobs: Sequence[Sequence[TokenLogprob] | None] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The whole response: choices as (text, finish_reason), in order; `logprobs` per choice when asked for."""
        obj = self._base(cid, model, "chat.completion" if self.chat else "text_completion")
        lps = list(logprobs) if logprobs is not None else [None] * len(choices)
        obj["choices"] = [
            self._choice(i, text, reason, self.logprobs(lp)) for i, ((text, reason), lp) in enumerate(zip(choices, lps))
        ]
        obj["usage"] = usage
        obj.update({k: v for k, v in extra.items() if v is not None})
        return obj

    def logprobs(self, tokens: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
        """OpenAI's `logprobs` object of one choice: chat's `content` list, or the legacy completions' four lists."""
        if tokens is None:
            return None
        if self.chat:
            return {
                "content": [
                    {
                        "token": t.token,
                        "logprob": t.logprob,
                        "bytes": t.utf8,
                        "top_logprobs": [
                            {"token": a, "logprob": v, "bytes": list(raw if raw is not None else a.encode("utf-8"))}
                            for (a, v), raw in zip(t.top, t.top_raw or [None] * len(t.top), strict=True)
                        ],
                    }
                    for t in tokens
                ],
                "refusal": None,
            }
        offsets, seen = [], b""
        for t in tokens:  # characters of the text before each token (a character split over tokens counts once done)
            offsets.append(len(seen.decode("utf-8", errors="ignore")))
            seen += bytes(t.utf8)
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [dict(t.top) for t in tokens],
            "text_offset": offsets,
        }

    def _choice(self, index: int, text: str, reason: str, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.chat:
            return {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": logprobs,
            }
        return {"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs}

    def chunk(
        self,
        cid: str,
        model: str,
        index: int = 0,
        text: str | None = None,
        finish_reason: str | None = None,
        *,
        role: bool = False,
        logprobs: Sequence[TokenLogprob] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """One streamed object: a piece of choice `index` (or none: an event or the finish). A choice's log-
        probabilities, when asked for, come whole with its finish chunk."""
        obj = self._base(cid, model, "chat.completion.chunk" if self.chat else "text_completion")
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta = {"role": "assistant", "content": ""}
            elif text is not None:
                delta = {"content": text}
            choice = {
                "index": index,
                "delta": delta,
                "finish_reason": finish_reason,
                "logprobs": self.logprobs(logprobs),
            }
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason}
            choice["logprobs"] = self.logprobs(logprobs)
        obj["choices"] = [choice]
        obj.update({k: v for k, v in extra.items() if v is not None})
        return obj

    def usage_chunk(self, cid: str, model: str, usage: dict) -> dict[str, Any]:
        """stream_options.include_usage: the last object, no choices."""
        obj = self._base(cid, model, "chat.completion.chunk" if self.chat else "text_completion")
        obj["choices"], obj["usage"] = [], usage
        return obj


CHAT = Shape(chat=True)
TEXT = Shape(chat=False)
