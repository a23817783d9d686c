"""Responses API items as they are stored and listed: every item gets an id and a status, and a
message's string content becomes content parts, so what input_items and conversation item lists
return parses as the SDK's item types, and can be sent back as input unchanged."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from sqlalchemy import Connection, Table, select

from infergate.errors import InvalidRequest

ID_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
    "mcp_list_tools": "mcpl",
    "mcp_call": "mcp",
    "mcp_approval_request": "mcpr",
    "mcp_approval_response": "mcpa",
    "item_reference": "ref",
}
ROLES = ("user", "assistant", "system", "developer")
MAX_ITEM_BYTES = 1 << 20


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def plausible_id(value: str) -> bool:
    """An id we could have stored (the columns hold 128 characters; PostgreSQL takes no NUL)."""
    return 0 < len(value) <= 128 and "\x00" not in value


def normalize_items(items: Any, param: str = "items") -> list[dict[str, Any]]:
    """Check and normalize a list of items; a bad one is a 400 naming it (`items[2].role`)."""
    if isinstance(items, str):  # `input` given as a plain string: one user message
        return [normalize_item({"role": "user", "content": items}, param)]
    if not isinstance(items, list):
        raise InvalidRequest(f"'{param}' must be a list of items.", param=param)
    return [normalize_item(item, f"{param}[{i}]") for i, item in enumerate(items)]


def normalize_item(item: Any, param: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{param}' must be an object.", param=param)
    item = dict(item)
    kind = item.get("type") or ("message" if "role" in item else None)
    if not isinstance(kind, str):
        raise InvalidRequest(f"'{param}.type' is required.", param=f"{param}.type")
    item["type"] = kind
    if kind == "message":
        _message(item, param)
    elif kind == "function_call":
        _require_strings(item, param, "call_id", "name", "arguments")
    elif kind == "function_call_output":
        _require_strings(item, param, "call_id")
        if not isinstance(item.get("output"), str | list):
            raise InvalidRequest(f"'{param}.output' must be a string or a list.", param=f"{param}.output")
    elif kind not in ID_PREFIXES:
        raise InvalidRequest(
            f"'{param}.type' {kind!r} is not supported; use one of {', '.join(ID_PREFIXES)}.",
            param=f"{param}.type",
        )
    if not isinstance(item.get("id"), str) or not item["id"]:
        item["id"] = new_id(ID_PREFIXES.get(kind, "item"))
    elif not plausible_id(item["id"]):
        raise InvalidRequest(f"'{param}.id' must be 1 to 128 characters.", param=f"{param}.id")
    if kind in ("message", "function_call", "function_call_output", "mcp_call", "reasoning"):
        item.setdefault("status", "completed")
        if item["status"] is None:
            item["status"] = "completed"
    return item


def _message(item: dict[str, Any], param: str) -> None:
    role = item.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"'{param}.role' must be one of {', '.join(ROLES)}.", param=f"{param}.role")
    content = item.get("content")
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        content = [{"type": text_type, "text": content}]
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{param}.content' must be a string or a list of parts.", param=f"{param}.content"
        )
    parts = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(f"'{where}' must be an object with a 'type'.", param=where)
        part = dict(part)
        if part["type"] in ("input_text", "output_text") and not isinstance(part.get("text"), str):
            raise InvalidRequest(f"'{where}.text' must be a string.", param=f"{where}.text")
        if role == "assistant" and part["type"] == "input_text":
            part["type"] = "output_text"  # an assistant's words are output text when listed
        if part["type"] == "output_text":
            part.setdefault("annotations", [])
        parts.append(part)
    item["content"] = parts


def _require_strings(item: dict[str, Any], param: str, *names: str) -> None:
    for name in names:
        if not isinstance(item.get(name), str):
            raise InvalidRequest(f"'{param}.{name}' must be a string.", param=f"{param}.{name}")


def check_metadata(metadata: Any, param: str = "metadata") -> dict[str, str]:
    """OpenAI's metadata rules: at most 16 pairs, keys up to 64 characters, string values up to 512."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidRequest(f"'{param}' must be an object of string values.", param=param)
    if len(metadata) > 16:
        raise InvalidRequest(f"'{param}' may hold at most 16 pairs.", param=param)
    for key, value in metadata.items():
        if len(key) > 64:
            raise InvalidRequest(f"'{param}' keys are at most 64 characters.", param=f"{param}.{key[:64]}")
        if not isinstance(value, str) or len(value) > 512:
            raise InvalidRequest(
                f"'{param}.{key}' must be a string of at most 512 characters.", param=f"{param}.{key}"
            )
    return dict(metadata)


def page(
    conn: Connection, table: Table, where: tuple[Any, ...], after: str | None, limit: int, order: str
) -> dict[str, Any]:
    """One page of items by their insertion order; `after` is an item id (cursor pagination)."""
    stmt = select(table.c.item).where(*where)
    if after:
        if not plausible_id(after):
            raise InvalidRequest(f"No item with id '{after[:128]}' in this list.", param="after")
        pivot = conn.execute(select(table.c.id).where(*where, table.c.item_id == after).limit(1)).scalar()
        if pivot is None:
            raise InvalidRequest(f"No item with id '{after}' in this list.", param="after")
        stmt = stmt.where(table.c.id > pivot if order == "asc" else table.c.id < pivot)
    stmt = stmt.order_by(table.c.id.asc() if order == "asc" else table.c.id.desc()).limit(limit + 1)
    data = [orjson.loads(r[0]) for r in conn.execute(stmt)]
    has_more = len(data) > limit
    data = data[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
