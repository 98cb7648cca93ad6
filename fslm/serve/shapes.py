"""The two OpenAI response shapes fslm serves, chat (`chat.completion[.chunk]`) and text (`text_completion`), built
from the same pieces: choices of (text, finish_reason), usage, and fslm's extra fields (`fslm_trace`, `fslm_cost`,
`fslm_event`). Extra fields sit beside the standard ones, so an OpenAI client parses every object unchanged."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fslm import __version__ as FSLM_VERSION


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
        self, cid: str, model: str, choices: list[tuple[str, str]], usage: dict, **extra: Any
    ) -> dict[str, Any]:
        """The whole response: choices as (text, finish_reason), in order."""
        obj = self._base(cid, model, "chat.completion" if self.chat else "text_completion")
        obj["choices"] = [self._choice(i, text, reason) for i, (text, reason) in enumerate(choices)]
        obj["usage"] = usage
        obj.update({k: v for k, v in extra.items() if v is not None})
        return obj

    def _choice(self, index: int, text: str, reason: str) -> dict[str, Any]:
        if self.chat:
            return {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": None,
            }
        return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}

    def chunk(
        self,
        cid: str,
        model: str,
        index: int = 0,
        text: str | None = None,
        finish_reason: str | None = None,
        *,
        role: bool = False,
        **extra: Any,
    ) -> dict[str, Any]:
        """One streamed object: a piece of choice `index` (or none: an event or the finish)."""
        obj = self._base(cid, model, "chat.completion.chunk" if self.chat else "text_completion")
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta = {"role": "assistant", "content": ""}
            elif text is not None:
                delta = {"content": text}
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
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
