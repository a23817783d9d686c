"""The text of one choice as its tokens arrive (llama.cpp engine).

Token pieces are bytes: a character split across two tokens is decoded once both have come.
Stop sequences end the text where they begin, and a tail that could still become one is held
back until it cannot, so no client ever sees part of a stop sequence. Logprob entries go out
with the text they produced.
"""

from __future__ import annotations

import codecs
from typing import Any


class ChoiceText:
    __slots__ = ("_decoder", "_logprobs", "_longest", "_pending", "_stops", "sent", "text")

    def __init__(self, stops: list[str], logprobs: bool) -> None:
        self.text = ""
        self.sent = 0  # characters of `text` already handed out
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stops = stops
        self._longest = max((len(s) for s in stops), default=0)
        self._logprobs = logprobs
        self._pending: list[tuple[int, dict[str, Any]]] = []  # (text offset, logprob entry)

    def add(self, piece: bytes, logprob: dict[str, Any] | None = None) -> bool:
        """Append a token's bytes; True when a stop sequence appeared (the text now ends before it)."""
        before = len(self.text)
        if logprob is not None:
            self._pending.append((before, logprob))
        self.text += self._decoder.decode(piece)
        if not self._stops:
            return False
        start = max(before - self._longest + 1, 0)
        hits = [i for i in (self.text.find(s, start) for s in self._stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def take(self, final: bool = False) -> tuple[str, list[dict[str, Any]] | None] | None:
        """Text not handed out yet (and its logprobs), without a tail that may begin a stop
        sequence unless `final`; None when there is nothing to send."""
        upto = len(self.text)
        if not final and self._stops:
            text = self.text
            upto -= max((k for s in self._stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        if upto <= self.sent:
            return None
        entries = None
        if self._logprobs:
            entries = [e for start, e in self._pending if start < upto]
            self._pending = [(start, e) for start, e in self._pending if start >= upto]
        chunk = self.text[self.sent : upto]
        self.sent = upto
        return chunk, entries
