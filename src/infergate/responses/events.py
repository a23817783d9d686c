"""Stream events of one response, and the output items they build.

`OutputBuilder` takes what the model produces (reasoning text, answer text, tool-call fragments)
and returns the Responses API events for it, in the order the openai SDK's strict stream state
accepts: an item is added before its parts, every added item is done before the response
completes, and each event carries its item's true `output_index` and a `sequence_number`
increasing by one. The items it finishes are the response's `output`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infergate.responses.translate import new_id

Event = dict[str, Any]


class Sequencer:
    """Numbers every event of a response (resumed streams count on from the stored events)."""

    def __init__(self, start: int = 0) -> None:
        self.next = start

    def event(self, kind: str, **fields: Any) -> Event:
        ev = {"type": kind, "sequence_number": self.next, **fields}
        self.next += 1
        return ev


@dataclass
class _Open:
    """An output item still being written."""

    item: dict[str, Any]
    index: int
    kind: str  # "reasoning" | "message" | "function_call" | "mcp_call"
    text: list[str] = field(default_factory=list)


@dataclass
class ToolCall:
    """A tool call the model finished: its output item (function_call or mcp_call)."""

    item: dict[str, Any]
    index: int


class OutputBuilder:
    def __init__(self, seq: Sequencer, output: list[dict[str, Any]], mcp_owner: Any = None) -> None:
        self.seq = seq
        # the response's output: an item joins it when added (index = position) and is completed
        # in place; added events carry a copy of its first state
        self.output = output
        self.mcp_owner = mcp_owner  # name -> server_label or None (MCP tools run by the server)
        self._open: _Open | None = None
        self._calls: dict[int, _Open] = {}  # chat tool-call index -> its open item
        self.finished_calls: list[ToolCall] = []
        self.reasoning_chars = 0

    # -- items written in one go (MCP listings and results) -------------------------------------
    def whole_item(self, item: dict[str, Any], middle: list[str] = ()) -> list[Event]:
        """An item added and done at once, with `middle` event types between (mcp_list_tools)."""
        events = self._close_open()
        index = len(self.output)
        self.output.append(item)
        events.append(self.seq.event("response.output_item.added", output_index=index, item=dict(item)))
        for kind in middle:
            events.append(self.seq.event(kind, item_id=item["id"], output_index=index))
        events.append(self.seq.event("response.output_item.done", output_index=index, item=item))
        return events

    # -- streamed output ------------------------------------------------------------------------
    def reasoning(self, text: str) -> list[Event]:
        if not text:
            return []
        events = self._switch("reasoning")
        assert self._open is not None
        self._open.text.append(text)
        self.reasoning_chars += len(text)
        events.append(
            self.seq.event(
                "response.reasoning_text.delta",
                item_id=self._open.item["id"],
                output_index=self._open.index,
                content_index=0,
                delta=text,
            )
        )
        return events

    def text(self, text: str) -> list[Event]:
        if not text:
            return []
        events = self._switch("message")
        assert self._open is not None
        self._open.text.append(text)
        events.append(
            self.seq.event(
                "response.output_text.delta",
                item_id=self._open.item["id"],
                output_index=self._open.index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> list[Event]:
        events: list[Event] = []
        call = self._calls.get(index)
        if call is None:
            events += self._close_open()
            label = self.mcp_owner(name) if self.mcp_owner and name else None
            position = len(self.output)
            if label is not None:
                item = {
                    "type": "mcp_call",
                    "id": new_id("mcp"),
                    "server_label": label,
                    "name": name,
                    "arguments": "",
                    "output": None,
                    "error": None,
                    "status": "in_progress",
                }
                kind = "mcp_call"
            else:
                item = {
                    "type": "function_call",
                    "id": new_id("fc"),
                    "call_id": call_id or new_id("call"),
                    "name": name or "",
                    "arguments": "",
                    "status": "in_progress",
                }
                kind = "function_call"
            call = self._calls[index] = _Open(item, position, kind)
            self.output.append(item)  # the same dict: completed in place
            events.append(
                self.seq.event("response.output_item.added", output_index=position, item=dict(item))
            )
        if arguments:
            call.text.append(arguments)
            delta = (
                "response.mcp_call_arguments.delta"
                if call.kind == "mcp_call"
                else ("response.function_call_arguments.delta")
            )
            events.append(
                self.seq.event(delta, item_id=call.item["id"], output_index=call.index, delta=arguments)
            )
        return events

    def finish(self, status: str) -> list[Event]:
        """Close every open item; `status` is the item status for an interrupted message."""
        events = self._close_open(status)
        for call in sorted(self._calls.values(), key=lambda c: c.index):
            item = call.item
            item["arguments"] = "".join(call.text) or "{}"
            if call.kind == "mcp_call":
                events.append(
                    self.seq.event(
                        "response.mcp_call_arguments.done",
                        item_id=item["id"],
                        output_index=call.index,
                        arguments=item["arguments"],
                    )
                )
                self.finished_calls.append(ToolCall(item, call.index))  # done once it has run
                continue
            item["status"] = "completed"
            events.append(
                self.seq.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=call.index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            events.append(self.seq.event("response.output_item.done", output_index=call.index, item=item))
            self.finished_calls.append(ToolCall(item, call.index))
        self._calls = {}
        return events

    def mcp_result(self, call: ToolCall, done: dict[str, Any]) -> list[Event]:
        """The events once a server-run MCP call returned (`done` is the finished mcp_call item)."""
        call.item.update(done)
        ok = call.item.get("error") is None
        call.item["status"] = "completed" if ok else "failed"
        return [
            self.seq.event(
                "response.mcp_call.completed" if ok else "response.mcp_call.failed",
                item_id=call.item["id"],
                output_index=call.index,
            ),
            self.seq.event("response.output_item.done", output_index=call.index, item=call.item),
        ]

    # -- internals ------------------------------------------------------------------------------
    def _switch(self, kind: str) -> list[Event]:
        if self._open is not None and self._open.kind == kind:
            return []
        events = self._close_open()
        index = len(self.output)
        if kind == "reasoning":
            item = {
                "type": "reasoning",
                "id": new_id("rs"),
                "summary": [],
                "content": [],
                "status": "in_progress",
            }
            part = {"type": "reasoning_text", "text": ""}
        else:
            item = {
                "type": "message",
                "id": new_id("msg"),
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self._open = _Open(item, index, kind)
        self.output.append(item)
        events.append(self.seq.event("response.output_item.added", output_index=index, item=dict(item)))
        events.append(
            self.seq.event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
        )
        return events

    def _close_open(self, status: str = "completed") -> list[Event]:
        current, self._open = self._open, None
        if current is None:
            return []
        item, index, text = current.item, current.index, "".join(current.text)
        events: list[Event] = []
        if current.kind == "reasoning":
            part: dict[str, Any] = {"type": "reasoning_text", "text": text}
            events.append(
                self.seq.event(
                    "response.reasoning_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                )
            )
            item["status"] = "completed"
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            events.append(
                self.seq.event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                )
            )
            item["status"] = status
        events.append(
            self.seq.event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
        )
        item["content"] = [part]
        events.append(self.seq.event("response.output_item.done", output_index=index, item=item))
        return events
