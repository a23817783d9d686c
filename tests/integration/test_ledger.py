"""The usage ledger equals what clients were told, under concurrency, streamed and not."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai

from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream


def usage_report(server: ServerProcess, group_by: str = "model") -> dict:
    r = httpx.get(f"{server.url}/v2/gen-ai/usage", params={"group_by": group_by}, headers=server.admin())
    r.raise_for_status()
    return r.json()


async def _one(client: openai.AsyncOpenAI, i: int, stream: bool) -> tuple[int, int]:
    messages = [{"role": "user", "content": "x" * (i * 8) + " what is the capital of France?"}]
    if stream:
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="standin",
                messages=messages,
                max_tokens=1 + i % 7,
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        usage = chunks[-1].usage
    else:
        usage = (
            await client.chat.completions.create(model="standin", messages=messages, max_tokens=1 + i % 7)
        ).usage
    return usage.prompt_tokens, usage.completion_tokens


def test_ledger_matches_client_usage_under_concurrency(fresh_server: ServerProcess) -> None:
    server = fresh_server.start()
    key = server.create_key("ledger")

    async def run() -> list[tuple[int, int]]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key=key["secret_key"], max_retries=0
        ) as client:
            return await asyncio.gather(*(_one(client, i, stream=i % 2 == 0) for i in range(32)))

    results = asyncio.run(run())
    prompt, completion = sum(r[0] for r in results), sum(r[1] for r in results)
    report = usage_report(server)
    row = next(r for r in report["usage"] if r["group"] == "standin")
    assert row["requests"] == 32 and row["failed_requests"] == 0 and row["estimated_requests"] == 0
    assert (row["input_tokens"], row["output_tokens"]) == (prompt, completion)
    # prices 1.0 / 2.0 USD per 1M tokens: 1000 and 2000 nano-USD per token
    assert row["cost_nano_usd"] == prompt * 1000 + completion * 2000
    by_key = usage_report(server, "key")["usage"]
    assert [(r["group"], r["key_name"], r["requests"]) for r in by_key] == [(key["uuid"], "ledger", 32)]
    by_day = usage_report(server, "day")["usage"]
    assert by_day[0]["group"] == time.strftime("%Y-%m-%d", time.gmtime()) and by_day[0]["requests"] == 32


def test_cli_usage_table(fresh_server: ServerProcess) -> None:
    server = fresh_server.start()
    secret = server.create_key("cli-usage")["secret_key"]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
    usage = client.chat.completions.create(
        model="standin", messages=[{"role": "user", "content": "hi"}]
    ).usage
    usage_report(server)  # forces a flush
    table = server.cli("usage", "--group-by", "model").stdout
    line = next(ln for ln in table.splitlines() if ln.startswith("standin"))
    assert line.split()[1:5] == ["1", "0", str(usage.prompt_tokens), str(usage.completion_tokens)]
    assert "TOTAL" in table


def test_stream_without_upstream_usage_is_counted_and_marked_estimated(fresh_server: ServerProcess) -> None:
    server = fresh_server.start()
    client = openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=server.create_key()["secret_key"], max_retries=0
    )
    chunks = list(
        client.chat.completions.create(
            model="standin-nousage",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage.completion_tokens > 0 and usage.prompt_tokens > 0
    resp = client.chat.completions.create(
        model="standin-nousage", messages=[{"role": "user", "content": "hi"}]
    )
    assert resp.usage.completion_tokens > 0
    row = next(r for r in usage_report(server)["usage"] if r["group"] == "standin-nousage")
    assert row["estimated_requests"] == 2
    assert row["output_tokens"] == usage.completion_tokens + resp.usage.completion_tokens


def test_shutdown_drains_in_flight_and_flushes_ledger(
    fresh_server: ServerProcess, upstream: StandInUpstream
) -> None:
    server = fresh_server
    server.env["INFERGATE_LEDGER_FLUSH_MS"] = "60000"  # nothing is written until shutdown flushes
    server.start()
    secret = server.create_key("drain")["secret_key"]

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:

            async def slow() -> int:
                r = await client.post(
                    f"{server.url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {secret}"},
                    json={"model": "standin-slow-ok", "messages": [{"role": "user", "content": "hi"}]},
                )
                return r.status_code

            received = len(upstream.requests)
            tasks = [asyncio.create_task(slow()) for _ in range(3)]
            deadline = time.monotonic() + 10
            while len(upstream.requests) < received + 3:  # all three are in flight at the upstream
                assert time.monotonic() < deadline, "the upstream never got the requests"
                await asyncio.sleep(0.02)
            stopper = asyncio.get_running_loop().run_in_executor(None, server.stop)
            codes = await asyncio.gather(*tasks)
            assert await stopper == 0
            return codes

    assert asyncio.run(run()) == [200, 200, 200]
    rows = server.cli("usage", "--json").stdout
    assert '"requests": 3' in rows
