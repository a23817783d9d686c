"""Prompt side of the llama.cpp engine: messages to chat-template input, tools to instructions.

Small local models rarely know a tool-calling format, and many GGUF templates (ChatML, like
SmolLM2's) ignore `tools`. So tools are described in the system message and the reply is
grammar-constrained to one JSON object {"name": ..., "arguments": {...}}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from infergate.cache.plan import Breakpoint, Ttl
from infergate.engines.llama.sampling import TOOL_TRIGGER_PATTERNS, schema_grammar, tool_call_schema
from infergate.errors import InvalidRequest
from infergate.schemas.chat import ChatCompletionRequest, Message, NamedToolChoice, TextPart

# Used when a GGUF carries no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


class Renderer(Protocol):
    """What tokenize_marked needs of a loaded model (model.LoadedModel)."""

    def render(self, messages: list[dict[str, str]]) -> str: ...

    def tokenize(self, text: str, bos: bool = True, special: bool = True) -> list[int]: ...


# Noncharacters (never in real text, passed through by Jinja templates) that mark the rendered
# prompt: client text spans (tokenized as plain text, so `<|im_start|>` typed by a client stays
# text) and cache_control breakpoints (exact token boundaries). Client text never carries them.
MARK = "\U000ffffd"
OPEN = "\U000ffffe"
CLOSE = "\U000fffff"
_MARK_RE = re.compile(f"{OPEN}|{CLOSE}|{MARK}(\\d+){MARK}|{MARK}")
_UNMARK = str.maketrans({MARK: "\ufffd", OPEN: "\ufffd", CLOSE: "\ufffd"})


def breakpoint_mark(index: int) -> str:
    return f"{MARK}{index}{MARK}"


def client_text(text: str) -> str:
    """Text from the request, stripped of anything that would read as one of our marks."""
    return text.translate(_UNMARK)


@dataclass(frozen=True, slots=True)
class Piece:
    text: str
    client: bool  # client text: no special-token parsing
    breakpoint: int | None = None  # index of the breakpoint right after this piece


def split_marked(text: str) -> list[Piece]:
    """Rendered prompt -> pieces of template text and client text, with the breakpoints.

    Fails closed: a span end without a start (a template that rewrote the message) makes the text
    since the previous mark client text; a start without an end makes the rest client text."""
    pieces: list[Piece] = []
    client = False
    start = 0
    for found in _MARK_RE.finditer(text):
        piece, mark = text[start : found.start()], found.group(0)
        if mark == OPEN:
            pieces.append(Piece(piece, client))
            client = True
        elif mark == CLOSE:
            pieces.append(Piece(piece, True))
            client = False
        else:
            index = found.group(1)
            pieces.append(Piece(piece, client, None if index is None else int(index)))
        start = found.end()
    pieces.append(Piece(text[start:], client))
    return pieces


def tokenize_marked(
    model: Renderer, messages: list[dict[str, str]], ttls: list[Ttl]
) -> tuple[list[int], list[tuple[int, Ttl]]]:
    """Render the chat and tokenize it piece by piece (client text without special tokens): the
    tokens, and for each breakpoint the number of tokens up to it with its ttl."""
    tokens: list[int] = []
    boundaries: list[tuple[int, Ttl]] = []
    for i, piece in enumerate(split_marked(model.render(messages))):
        if piece.text or i == 0:
            tokens += model.tokenize(piece.text, bos=(i == 0), special=not piece.client)
        if piece.breakpoint is not None and piece.breakpoint < len(ttls):
            boundaries.append((len(tokens), ttls[piece.breakpoint]))
    return tokens, boundaries


def prompt_tokens(
    model: Renderer, messages: list[dict[str, str]], ttls: list[Ttl], n_ctx: int
) -> tuple[list[int], list[tuple[int, Ttl]]]:
    """`tokenize_marked`, refused (400) when the prompt leaves no room in the context window."""
    tokens, boundaries = tokenize_marked(model, messages, ttls)
    if len(tokens) >= n_ctx:
        raise InvalidRequest(
            f"the prompt is {len(tokens)} tokens; this model's context window is {n_ctx} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    return tokens, boundaries


@dataclass
class ToolPlan:
    mode: Literal["none", "auto", "required"] = "none"
    functions: list[dict[str, Any]] = field(default_factory=list)
    grammar: str | None = None
    triggers: list[str] | None = None

    @property
    def names(self) -> set[str]:
        return {f["name"] for f in self.functions}


def plan_tools(params: ChatCompletionRequest) -> ToolPlan:
    if not params.tools or params.tool_choice == "none":
        return ToolPlan()
    functions = [t.function.model_dump(exclude_none=True, exclude={"strict"}) for t in params.tools]
    choice = params.tool_choice or "auto"
    if isinstance(choice, NamedToolChoice):
        wanted = choice.function.get("name")
        functions = [f for f in functions if f["name"] == wanted]
        if not functions:
            raise InvalidRequest(
                f"tool_choice names function '{wanted}', which is not in tools", param="tool_choice"
            )
        choice = "required"
    for f in functions:
        params_schema = f.get("parameters")
        if params_schema is not None and not isinstance(params_schema, dict):
            raise InvalidRequest("function parameters must be a JSON schema object", param="tools")
    grammar = schema_grammar(tool_call_schema(functions), param="tools")
    mode: Literal["auto", "required"] = "required" if choice == "required" else "auto"
    return ToolPlan(
        mode=mode,
        functions=functions,
        grammar=grammar,
        triggers=list(TOOL_TRIGGER_PATTERNS) if mode == "auto" else None,
    )


def _tool_instructions(plan: ToolPlan) -> str:
    lines = [
        "You have access to the following functions:",
        json.dumps(plan.functions, ensure_ascii=False),
        "",
        'To call a function, reply with only a JSON object of the form {"name": "<function name>", '
        '"arguments": {<argument name>: <value>}} and nothing else.',
    ]
    if plan.mode == "auto":
        lines.append("If no function is needed, reply normally in plain text.")
    elif len(plan.functions) == 1:
        lines.append(f'You must call the function "{plan.functions[0]["name"]}".')
    else:
        lines.append("You must call one of the functions.")
    return "\n".join(lines)


def _marked_text(msg: Message, marks: dict[int, int]) -> str:
    """The message's text with a breakpoint mark after each part that carries cache_control."""
    content = msg.content
    if not marks or content is None or isinstance(content, str):
        return client_text(msg.text())
    parts = content if isinstance(content, list) else [content]
    out: list[str] = []
    for index, part in enumerate(parts):
        if isinstance(part, TextPart):
            out.append(client_text(part.text))
        if index in marks:
            out.append(breakpoint_mark(marks[index]))
    return "".join(out)


def chat_messages(
    params: ChatCompletionRequest, plan: ToolPlan, breakpoints: Sequence[Breakpoint] = ()
) -> list[dict[str, str]]:
    """The request's messages as plain {role, content} dicts a Jinja chat template can render.

    Each content is one client text span (OPEN ... CLOSE); breakpoint k (cache_control) leaves
    `breakpoint_mark(k)` right after its part's text.
    """
    marks: dict[int, dict[int, int]] = {}
    for k, bp in enumerate(breakpoints):
        marks.setdefault(bp.message_index, {})[bp.part_index] = k
    out: list[dict[str, str]] = []
    for m_index, msg in enumerate(params.messages):
        role = "system" if msg.role == "developer" else msg.role
        text = _marked_text(msg, marks.get(m_index, {}))
        if msg.role == "assistant" and msg.tool_calls:
            calls = []
            for call in msg.tool_calls:
                try:
                    args: Any = json.loads(call.function.arguments)
                except ValueError:
                    args = call.function.arguments
                call_json = json.dumps({"name": call.function.name, "arguments": args}, ensure_ascii=False)
                calls.append(client_text(call_json))
            text = "\n".join([text, *calls]) if text else "\n".join(calls)
        out.append({"role": role, "content": text})
    if plan.mode != "none":
        instructions = client_text(_tool_instructions(plan))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}"}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return [{"role": m["role"], "content": f"{OPEN}{m['content']}{CLOSE}"} for m in out]


def parse_tool_call(text: str, plan: ToolPlan) -> tuple[str, str] | None:
    """(name, arguments JSON) when `text` is one call to an offered function, else None."""
    body = text.strip()
    if body.startswith("<tool_call>"):
        body = body.removeprefix("<tool_call>").removesuffix("</tool_call>").strip()
    if not body.startswith("{"):
        return None
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or call.get("name") not in plan.names:
        return None
    args = call.get("arguments", call.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return call["name"], json.dumps(args, ensure_ascii=False)
