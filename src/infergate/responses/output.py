"""Chat results -> Responses output: reasoning, text and tool calls fed to an OutputBuilder.

Reasoning comes from an upstream's `reasoning_content` / `reasoning` fields (vLLM, llama.cpp's
server, DeepSeek, OpenRouter spell it either way) and from a `<think>...</think>` block that
opens a model's own text (local reasoning models print it inline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infergate.responses.events import Event, OutputBuilder

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


class ThinkSplitter:
    """Splits streamed text into ("reasoning" | "text", chunk) as a leading <think> block closes."""

    def __init__(self) -> None:
        self.state = "start"  # start -> think -> after -> text
        self.buf = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.buf += text
        out: list[tuple[str, str]] = []
        while self.buf:
            if self.state == "start":
                head = self.buf.lstrip()
                if head.startswith(OPEN_TAG):
                    self.buf = head[len(OPEN_TAG) :].lstrip("\n")
                    self.state = "think"
                elif OPEN_TAG.startswith(head):  # maybe the tag, not complete yet
                    return out
                else:
                    self.state = "text"
            elif self.state == "think":
                end = self.buf.find(CLOSE_TAG)
                if end >= 0:
                    out.append(("reasoning", self.buf[:end].rstrip("\n")))
                    self.buf = self.buf[end + len(CLOSE_TAG) :]
                    self.state = "after"
                    continue
                keep = _partial_suffix(self.buf, CLOSE_TAG)
                ready, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
                if ready:
                    out.append(("reasoning", ready))
                return out
            elif self.state == "after":  # the blank lines between </think> and the answer
                self.buf = self.buf.lstrip()
                if self.buf:
                    self.state = "text"
            else:
                out.append(("text", self.buf))
                self.buf = ""
        return [(k, t) for k, t in out if t]

    def flush(self) -> list[tuple[str, str]]:
        rest, self.buf = self.buf, ""
        if not rest:
            return []
        return [("reasoning" if self.state == "think" else "text", rest)]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a start of `tag` (held back until decided)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


@dataclass
class StepEnd:
    finish_reason: str | None = None


class ChatOutput:
    """Feeds one model call's chat output (chunks or a whole completion) to the builder."""

    def __init__(self, builder: OutputBuilder) -> None:
        self.builder = builder
        self.splitter = ThinkSplitter()
        self.end = StepEnd()
        self.texts: list[str] = []  # everything the model said (for estimates when usage is missing)
        self.reasoning: list[str] = []  # its reasoning (counted when the backend does not say)

    def _emit(self, kind: str, chunk: str) -> list[Event]:
        if kind == "reasoning":
            self.reasoning.append(chunk)
            return self.builder.reasoning(chunk)
        return self.builder.text(chunk)

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        for kind, chunk in self.splitter.feed(text):
            events += self._emit(kind, chunk)
        return events

    def chunk(self, chunk: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            events += self._delta(delta if isinstance(delta, dict) else {})
            if choice.get("finish_reason"):
                self.end.finish_reason = choice["finish_reason"]
        return events

    def _delta(self, delta: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self.texts.append(reasoning)
            events += self._emit("reasoning", reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.texts.append(content)
            events += self._text(content)
        for position, call in enumerate(delta.get("tool_calls") or ()):
            if not isinstance(call, dict):
                continue
            fn = call.get("function") if isinstance(call.get("function"), dict) else {}
            name, args = fn.get("name"), fn.get("arguments") or ""
            self.texts.append(str(name or "") + str(args))
            index = call.get("index", position)
            events += self._flush_text()
            events += self.builder.tool_call(
                index if isinstance(index, int) else position, call.get("id"), name, args
            )
        return events

    def completion(self, body: dict[str, Any]) -> list[Event]:
        """A whole chat.completion, as if streamed in one chunk."""
        choices = body.get("choices") or []
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        delta = dict(message)
        delta["tool_calls"] = [
            {**c, "index": i} for i, c in enumerate(message.get("tool_calls") or ()) if isinstance(c, dict)
        ]
        events = self._delta(delta)
        self.end.finish_reason = choice.get("finish_reason")
        return events

    def _flush_text(self) -> list[Event]:
        events: list[Event] = []
        for kind, chunk in self.splitter.flush():
            events += self._emit(kind, chunk)
        return events

    def finish(self) -> list[Event]:
        """End of the model call: pending text, then every open item closed."""
        events = self._flush_text()
        cut = self.end.finish_reason == "length"
        events += self.builder.finish("incomplete" if cut else "completed")
        return events
