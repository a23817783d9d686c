#!/usr/bin/env python3
"""What admission and settlement cost per request, measured in one process without HTTP (issue 11).

Times `KeyLimiter.admit` + `Meter.settle` for the gateway bench's request (one short user message,
max_tokens 16) on a real SQLite database: a key without limits, a key with a budget and an rpm
limit on the in-process limiter, and the same limits shared through a private redis-server. A
noisy machine moves the HTTP bench's latencies by milliseconds; CPU time per call here moves much less.

Usage: .venv/bin/python bench/limits_micro.py [--requests N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from infergate.auth import KeyCache, RevocationEpoch
from infergate.catalog import ModelSpec
from infergate.limits import KeyLimiter, KeyLimits
from infergate.metering import Charge, Meter
from infergate.storage.db import open_database
from infergate.storage.keys import KeyRepository
from infergate.tokens import chat_framing_tokens, warm_up
from infergate.usage import Usage

SPEC = ModelSpec(
    id="mock-model", backend="openai", base_url="http://127.0.0.1:9/v1", input_price=1.0, output_price=2.0
)
LIMITS = KeyLimits(rpm=100_000_000, monthly_budget_usd=1_000_000.0)


class NullLedger:
    """The ledger writer's part is measured by the gateway bench; here only the limiter is."""

    def record(self, entry: object) -> None:
        pass


async def measure(limiter: KeyLimiter, key_uuid: str, requests: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per admitted-and-settled request."""
    ledger = NullLedger()
    counter = iter(range(10**9))

    async def one() -> None:
        n = next(counter)
        meter = Meter(
            ledger,
            Charge(SPEC, f"req_{n}", key_uuid, "chat.completions", time.perf_counter()),
            prompt_texts=lambda: ["hi"],
            prompt_overhead=chat_framing_tokens,
        )
        await limiter.admit(meter, 16)
        meter.settle(200, Usage(input_tokens=9, output_tokens=5))

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*(worker(50) for _ in range(concurrency)))  # warm-up (scripts loaded, caches)
    if limiter._tasks:
        await asyncio.wait(set(limiter._tasks))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    if limiter._tasks:  # settlements still on their way to Redis count too
        await asyncio.wait(set(limiter._tasks))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    done = requests // concurrency * concurrency
    return cpu / done * 1e6, wall / done * 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(requests: int, concurrency: int) -> None:
    warm_up()
    folder = Path(tempfile.mkdtemp(prefix="limits-micro-"))
    redis_proc = None
    try:
        db = open_database(f"sqlite:///{folder / 'db.sqlite'}")
        keys = KeyRepository(db)
        cache = KeyCache(keys, RevocationEpoch(folder))
        free, _ = keys.create("free")
        limited, _ = keys.create("limited")
        rows = []
        local = KeyLimiter(db, None, cache)
        await local.start()
        await local.set(limited.uuid, LIMITS)
        rows.append(("no limits", *await measure(local, free.uuid, requests, concurrency)))
        rows.append(("budget + rpm, in-process", *await measure(local, limited.uuid, requests, concurrency)))
        await local.close()
        if shutil.which("redis-server"):
            port = free_port()
            redis_proc = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                stdout=subprocess.DEVNULL,
            )
            shared = KeyLimiter(db, f"redis://127.0.0.1:{port}/0", cache)
            for _ in range(100):
                try:
                    await shared.redis.ping()  # type: ignore[union-attr]
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            await shared.start()
            rows.append(("budget + rpm, Redis", *await measure(shared, limited.uuid, requests, concurrency)))
            await shared.close()
        head = f"limiter ({requests} requests, {concurrency} at a time)"
        print(f"| {head} | CPU µs/request | wall µs/request |")
        print("|---|---|---|")
        for name, cpu, wall in rows:
            print(f"| {name} | {cpu:.1f} | {wall:.1f} |")
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
