"""Prompt cache of the embedded engine: time to first token with a ~1,000-token cached prefix.

    .venv/bin/python bench/prompt_cache_bench.py [--runs 5] [--prefix-tokens 1000]

Every run uses a fresh system prompt of about `--prefix-tokens` tokens marked with
`cache_control`, and a short user question. Measured on one LlamaCppEngine (SmolLM2 GGUF,
parallel=1, all cores), time from submitting the request to its first content token:

- cold: the prefix is new (evaluated in full and saved);
- warm, slot: the same prefix again at once (its KV cells are still in the slot);
- warm, store: after another prompt took the slot, so the saved state is restored from memory;
- warm, disk: after the entry was spilled to disk by a full memory budget;
- uncached: the same request with cache_control left out and the slot taken (the baseline a
  client without caching gets).

Prints a markdown table (best of `--runs`: on a shared machine noise only slows a run down) and
the bytes of memory per cached token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from infergate.cache.plan import PromptCachePlan
from infergate.catalog import ModelSpec, packaged_smollm2_path
from infergate.engines.base import ChatRequest, RequestContext
from infergate.engines.llama.engine import LlamaCppEngine
from infergate.schemas.chat import ChatCompletionRequest
from infergate.usage import Usage


def system_prompt(run: int, tokens: int) -> str:
    rules = max(tokens // 11, 1)  # ~11 tokens per rule with SmolLM2's tokenizer
    return f"Manual {run}. " + " ".join(f"Rule {i} of manual {run}: answer briefly." for i in range(rules))


def request(system: str, cached: bool, question: str = "What is 2+2?") -> ChatRequest:
    part: dict[str, Any] = {"type": "text", "text": system}
    if cached:
        part["cache_control"] = {"type": "ephemeral", "ttl": "5m"}
    body = {
        "model": "bench",
        "messages": [{"role": "system", "content": [part]}, {"role": "user", "content": question}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
    }
    params = ChatCompletionRequest.model_validate(body)
    return ChatRequest(params, body, RequestContext("bench"), PromptCachePlan.from_messages(params.messages))


async def first_token(engine: LlamaCppEngine, req: ChatRequest) -> tuple[float, Usage]:
    """Seconds to the first content delta, and the request's usage."""
    started = time.perf_counter()
    ttft = None
    usage = Usage()
    async for item in engine.stream(req):
        if isinstance(item, Usage):
            usage = item
        elif ttft is None and item["choices"] and item["choices"][0]["delta"].get("content"):
            ttft = time.perf_counter() - started
    return (ttft if ttft is not None else time.perf_counter() - started), usage


async def take_slot(engine: LlamaCppEngine, run: int) -> None:
    await first_token(engine, request(f"Unrelated prompt {run}.", cached=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=packaged_smollm2_path())
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if not args.gguf:
        sys.exit("no GGUF: pass --gguf")
    asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="igbench-cache-"))
    spec = ModelSpec(
        id="bench", backend="llama_cpp", path=args.gguf, n_ctx=2048, parallel=1, threads=args.threads
    )
    engine = LlamaCppEngine(spec, data_dir=data_dir)
    # a second engine whose memory budget holds one entry, so the previous one goes to disk
    small = spec.model_copy(update={"id": "bench-disk", "prompt_cache_mb": 30, "prompt_cache_disk_mb": 512})
    disk_engine = LlamaCppEngine(small, data_dir=data_dir)
    await engine.start()
    await disk_engine.start()
    times: dict[str, list[float]] = {k: [] for k in ("cold", "slot", "store", "disk", "uncached")}
    prefix_tokens: list[int] = []
    try:
        for eng in (engine, disk_engine):  # warm-up
            await first_token(eng, request(system_prompt(-1, args.prefix_tokens), cached=True))
        for r in range(args.runs):
            system = system_prompt(r, args.prefix_tokens)
            cold, usage = await first_token(engine, request(system, cached=True))
            prefix_tokens.append(usage.cache_write_5m_tokens)
            times["cold"].append(cold)
            times["slot"].append((await first_token(engine, request(system, cached=True)))[0])
            await take_slot(engine, r)
            store_ttft, usage = await first_token(engine, request(system, cached=True))
            assert usage.cache_read_tokens == prefix_tokens[-1], "the store did not serve the prefix"
            times["store"].append(store_ttft)
            await take_slot(engine, r)
            # a different first token, so neither the slot nor the store can serve any of it
            uncached = request(f"Uncached. {system}", cached=False)
            times["uncached"].append((await first_token(engine, uncached))[0])

            await first_token(disk_engine, request(system, cached=True))
            await first_token(disk_engine, request(system_prompt(1000 + r, args.prefix_tokens), cached=True))
            disk_ttft, usage = await first_token(disk_engine, request(system, cached=True))
            assert usage.cache_read_tokens == prefix_tokens[-1], "the spilled entry was not read back"
            times["disk"].append(disk_ttft)
        stats = engine.prompt_cache.store.stats() if engine.prompt_cache else None
    finally:
        await engine.close()
        await disk_engine.close()

    best = {k: min(v) for k, v in times.items()}
    assert stats is not None
    per_token = stats.bytes_in_memory / max(stats.tokens_in_memory, 1)
    print(
        f"\nGGUF {Path(args.gguf).name}, threads {args.threads}, cached prefix "
        f"{min(prefix_tokens)}-{max(prefix_tokens)} tokens + a short question, best of {args.runs} runs, "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    print("| time to first token | ms | vs cold |")
    print("|---|---|---|")
    for label, key in (
        ("cold (prefix evaluated and saved)", "cold"),
        ("uncached request (no cache_control, slot taken)", "uncached"),
        ("warm: prefix still in the KV slot", "slot"),
        ("warm: state restored from the memory store", "store"),
        ("warm: state read back from disk spill", "disk"),
    ):
        print(f"| {label} | {1000 * best[key]:.1f} | {best['cold'] / best[key]:.1f}x faster |")
    speedup = best["cold"] / best["store"]
    verdict = "PASS" if speedup >= 20 else "MISS"
    print(
        f"\nMemory per cached token: {per_token:,.0f} bytes ({stats.entries} entries, "
        f"{stats.bytes_in_memory / 2**20:.1f} MiB for {stats.tokens_in_memory} tokens).\n"
        f"Target: warm (restored from the store) >= 20x faster than cold: **{verdict}** ({speedup:.1f}x)."
    )


if __name__ == "__main__":
    main()
