"""Token-level streaming for every engine: turn the token ids a decode loop produces, one step at a time, into text
pieces that join to exactly the text `generate` returns for the same row.

`generate` decodes a row's tokens once at the end, cuts at the first stop string and strips surrounding whitespace.
A streamed piece cannot be taken back, so `TextDeltas` holds back what the final text might still lose: leading
whitespace, trailing whitespace (stripped if nothing follows), a trailing partial UTF-8 character (decoded as U+FFFD)
and a tail that could be the start of a stop string. `finish` sends whatever of the final text is still unsent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fslm.engine.decode import cut_at_stop

# (row index in the caller's `texts`, a new piece of that row's text); called on the decoding thread.
OnText = Callable[[int, str], None]


class TextDeltas:
    """One row's streamed text: feed the row's generated token ids after every step, get the new safe piece."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str] = ()):
        self.decode = decode
        self.stops = tuple(s for s in stops if s)
        self.sent = ""
        self.done = False  # a stop string was seen: nothing after it is ever sent

    def feed(self, tokens: Sequence[int]) -> str:
        """The piece of text that became certain with the latest token ('' when nothing did)."""
        if self.done:
            return ""
        text = self.decode(tokens).lstrip()
        cut = cut_at_stop(text, self.stops) if self.stops else None
        if cut is not None:
            self.done = True
            return self._advance(cut.rstrip())
        return self._advance(self._safe(text))

    def finish(self, final: str) -> str:
        """The rest of the row's final text (what `generate` returns) not sent yet."""
        self.done = True
        if not final.startswith(self.sent):  # cannot happen for a sane tokenizer; never send a wrong prefix twice
            return ""
        rest, self.sent = final[len(self.sent) :], final
        return rest

    def _safe(self, text: str) -> str:
        """`text` without the tail that later tokens or the final strip/stop cut could still change."""
        text = text.rstrip().rstrip("\ufffd")  # U+FFFD: half of a multi-byte character so far
        for stop in self.stops:  # a tail that may grow into a stop string stays back
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    text = text[:-k]
                    break
        return text.rstrip()  # what the cuts above exposed may be whitespace the final strip drops

    def _advance(self, safe: str) -> str:
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        piece, self.sent = safe[len(self.sent) :], safe
        return piece


class RowStreams:
    """The TextDeltas of every row of one generate call; maps a decode batch's rows back to the caller's indices."""

    def __init__(self, n: int, decode: Callable[[Sequence[int]], str], stops: Sequence[str], on_text: OnText):
        self.rows = [TextDeltas(decode, stops) for _ in range(n)]
        self.on_text = on_text

    def token_callback(self, batch: Sequence[int]) -> Callable[[int, Sequence[int]], None]:
        """The decode loop's `on_token(row_in_batch, generated_tokens)` for a batch holding caller rows `batch`."""

        def on_token(row: int, tokens: Sequence[int]) -> None:
            index = batch[row]
            piece = self.rows[index].feed(tokens)
            if piece:
                self.on_text(index, piece)

        return on_token

    def finish(self, index: int, final: str) -> None:
        piece = self.rows[index].finish(final)
        if piece:
            self.on_text(index, piece)
