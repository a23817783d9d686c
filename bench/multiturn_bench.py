#!/usr/bin/env python3
"""Multi-turn prefix reuse on more conversations than KV slots (issue 10, point 5).

    .venv/bin/python bench/multiturn_bench.py [--conversations 32] [--turns 4] [--parallel 4]
    LLAMA_SERVER_BIN=/path/to/llama-server .venv/bin/python bench/multiturn_bench.py

`--conversations` chats of `--turns` turns each, on a model with `--parallel` KV slots: infergate
(`infergate serve`, the embedded engine, a key, POST /v1/chat/completions) and llama.cpp's
`llama-server` with `--cache-ram` on the same GGUF, threads, slots and per-slot context. Every
turn sends the whole history so far (system prompt of ~`--system-tokens` tokens, distinct per
conversation so turn 1 never reuses another conversation's prefix; the user questions and the
model's own earlier answers), streamed, temperature 0; the time to first token is the time from
sending it to the first content delta.

Turns are served in waves: turn 1 of every conversation, then turn 2 of every conversation, ...
with `--parallel` requests in flight at a time (no queueing, each request has a slot), so by the
time a conversation's next turn comes, its slot has served `conversations / parallel` other
conversations: its prefix can only come back from a state saved at handover. Waves alternate
between the two servers (infergate's turn 1, llama-server's turn 1, infergate's turn 2, ...), so
the noise of a shared machine hits both alike.

Prints a markdown table: per turn, the median TTFT of each server, their ratio and the median
`cached_tokens` each reports; then each server's turn 1 / turns 2+ speed-up. Progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

from infergate.catalog import packaged_smollm2_path  # noqa: E402

HOST = "127.0.0.1"
CLI = [sys.executable, "-c", "import sys; from infergate.cli import main; sys.exit(main())"]
QUESTIONS = [
    "Give me a short summary of the first rules.",
    "Which of these rules matters most, and why?",
    "Rewrite that answer for a new employee.",
    "Now list three exceptions to it.",
    "What should happen when two rules conflict?",
    "Close with one sentence of advice.",
]


def log(msg: str) -> None:
    print(f"[multiturn] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def system_prompt(conv: int, tokens: int) -> str:
    rules = max(tokens // 16, 1)  # ~16 tokens per rule with SmolLM2's tokenizer
    return f"Handbook {conv} of shop {conv * 7919 % 1000}. " + " ".join(
        f"Rule {i} of handbook {conv}: be brief, exact and polite." for i in range(rules)
    )


@dataclass
class Target:
    name: str
    url: str
    model: str
    headers: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    ttft: dict[int, list[float]] = field(default_factory=dict)  # turn -> seconds
    cached: dict[int, list[int]] = field(default_factory=dict)  # turn -> cached_tokens reported
    prompt: dict[int, list[int]] = field(default_factory=dict)  # turn -> prompt_tokens
    errors: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen[bytes], what: str, log_path: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"{what} did not become healthy: {log_path.read_text()[-2000:]}")


def start_infergate(args: argparse.Namespace, work: Path) -> Target:
    catalog = work / "catalog.toml"
    catalog.write_text(
        "builtins = false\n\n[[models]]\n"
        f'id = "bench-multiturn"\nbackend = "llama_cpp"\npath = "{args.gguf}"\n'
        f"n_ctx = {args.n_ctx}\nparallel = {args.parallel}\nthreads = {args.threads}\n"
        f"max_queue = {4 * args.conversations}\nslot_cache_mb = {args.cache_mb}\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "INFERGATE_DATA_DIR": str(work / "data"),
        "INFERGATE_CONFIG": str(catalog),
        "INFERGATE_ADMIN_TOKEN": f"adm-multiturn-{os.getpid()}",
    }
    port = free_port()
    log_path = work / "infergate.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [*CLI, "serve", "--host", HOST, "--port", str(port), "--workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{HOST}:{port}"
    wait_healthy(url, proc, "infergate", log_path)
    made = subprocess.run(
        [*CLI, "keys", "create", "multiturn-bench"], env=env, capture_output=True, text=True, timeout=120
    )
    key = json.loads(made.stdout)["secret_key"]
    return Target("infergate", url, "bench-multiturn", {"Authorization": f"Bearer {key}"}, proc)


def start_llama_server(args: argparse.Namespace, binary: str, work: Path) -> Target:
    port = free_port()
    cmd = [
        binary,
        "-m",
        args.gguf,
        "-t",
        str(args.threads),
        "-tb",
        str(args.threads),
        "-np",
        str(args.parallel),
        "-c",
        str(args.n_ctx * args.parallel),
        "-b",
        "512",
        "-ub",
        "512",
        "--cache-ram",
        str(args.cache_mb),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    log_path = work / "llama-server.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{HOST}:{port}"
    wait_healthy(url, proc, "llama-server", log_path)
    return Target("llama-server", url, "bench", {}, proc)


async def one_turn(
    session: aiohttp.ClientSession, target: Target, history: list[dict[str, str]], max_tokens: int
) -> tuple[float, str, int, int]:
    """(seconds to the first content delta, the reply, prompt_tokens, cached_tokens)."""
    body = {
        "model": target.model,
        "messages": history,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft: float | None = None
    parts: list[str] = []
    prompt = cached = 0
    async with session.post(f"{target.url}/v1/chat/completions", json=body, headers=target.headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{target.name}: HTTP {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{target.name}: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    ttft = ttft if ttft is not None else time.perf_counter() - started
                    parts.append(text)
            usage = chunk.get("usage")
            if usage:
                prompt = usage.get("prompt_tokens", 0)
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return (ttft if ttft is not None else time.perf_counter() - started), "".join(parts), prompt, cached


async def wave(
    target: Target, histories: list[list[dict[str, str]]], turn: int, args: argparse.Namespace
) -> None:
    """Turn `turn` of every conversation, `args.parallel` at a time, in conversation order."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for conv in range(len(histories)):
        queue.put_nowait(conv)
    question = QUESTIONS[(turn - 1) % len(QUESTIONS)]

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            conv = queue.get_nowait()
            history = histories[conv] + [{"role": "user", "content": f"{question} (conversation {conv})"}]
            try:
                ttft, reply, prompt, cached = await one_turn(session, target, history, args.max_tokens)
            except Exception as exc:  # noted in the report; the conversation goes on without this turn
                target.errors.append(f"turn {turn}, conversation {conv}: {exc}")
                continue
            histories[conv] = [*history, {"role": "assistant", "content": reply}]
            target.ttft.setdefault(turn, []).append(ttft)
            target.cached.setdefault(turn, []).append(cached)
            target.prompt.setdefault(turn, []).append(prompt)

    # a connection per request: llama-server drops idle keep-alive connections while a worker
    # waits, and a reused dead one fails the turn
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.parallel)))


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(targets: list[Target], args: argparse.Namespace) -> None:
    ig = targets[0]
    ls = targets[1] if len(targets) > 1 else None
    print(
        f"\n{args.conversations} conversations x {args.turns} turns on {args.parallel} slots, "
        f"GGUF {Path(args.gguf).name}, {args.threads} threads, n_ctx {args.n_ctx} per slot, "
        f"system prompt ~{args.system_tokens} tokens (distinct per conversation), {args.max_tokens} "
        f"new tokens per turn, temperature 0, {args.cache_mb} MB for saved slot states on both sides "
        f"(infergate `slot_cache_mb`, llama-server `--cache-ram`). TTFT = median time to the first "
        f"content token of a streamed /v1/chat/completions, whole history sent each turn.\n"
    )
    head = "| turn | infergate prompt tokens p50 | infergate TTFT p50 | infergate cached_tokens p50 |"
    rule = "|---|---|---|---|"
    if ls is not None:
        head += (
            " llama-server prompt tokens p50 | llama-server TTFT p50 | llama-server cached_tokens p50"
            " | llama-server / infergate TTFT |"
        )
        rule += "---|---|---|---|"
    print(head)
    print(rule)
    for turn in range(1, args.turns + 1):
        row = (
            f"| {turn} | {p50(ig.prompt.get(turn, [])):.0f} | {1000 * p50(ig.ttft.get(turn, [])):.0f} ms "
            f"| {p50(ig.cached.get(turn, [])):.0f} |"
        )
        if ls is not None:
            ratio = p50(ls.ttft.get(turn, [])) / p50(ig.ttft.get(turn, []))
            row += (
                f" {p50(ls.prompt.get(turn, [])):.0f} | {1000 * p50(ls.ttft.get(turn, [])):.0f} ms "
                f"| {p50(ls.cached.get(turn, [])):.0f} | {ratio:.2f}x |"
            )
        print(row)
    print()
    for t in targets:
        later = [x for turn in range(2, args.turns + 1) for x in t.ttft.get(turn, [])]
        speedup = p50(t.ttft.get(1, [])) / p50(later)
        print(
            f"- {t.name}: turn 1 TTFT p50 {1000 * p50(t.ttft.get(1, [])):.0f} ms, turns 2+ p50 "
            f"{1000 * p50(later):.0f} ms: turns 2+ are **{speedup:.1f}x** faster than turn 1."
        )
    if ls is not None:
        later_ig = [x for turn in range(2, args.turns + 1) for x in ig.ttft.get(turn, [])]
        later_ls = [x for turn in range(2, args.turns + 1) for x in ls.ttft.get(turn, [])]
        print(
            f"- turns 2+: llama-server / infergate TTFT p50 = **{p50(later_ls) / p50(later_ig):.2f}x** "
            "(above 1: infergate's first token comes sooner)."
        )
    else:
        print("- llama-server: skipped (set LLAMA_SERVER_BIN; bench/build_llama_server.sh builds it).")
    for t in targets:
        for err in t.errors[:5]:
            print(f"- {t.name} error: {err}")
        if len(t.errors) > 5:
            print(f"- {t.name}: {len(t.errors) - 5} more errors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=packaged_smollm2_path())
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cache-mb", type=int, default=2048, help="memory for saved slot states, both sides")
    args = ap.parse_args()
    if not args.gguf:
        sys.exit("no GGUF: pass --gguf")
    binary = os.environ.get("LLAMA_SERVER_BIN")
    work = Path(tempfile.mkdtemp(prefix="multiturn-bench-"))
    targets: list[Target] = []
    try:
        log("starting infergate")
        targets.append(start_infergate(args, work))
        if binary and Path(binary).exists():
            log(f"starting llama-server ({binary})")
            targets.append(start_llama_server(args, binary, work))
        histories = {
            t.name: [
                [{"role": "system", "content": system_prompt(c, args.system_tokens)}]
                for c in range(args.conversations)
            ]
            for t in targets
        }
        for t in targets:  # warm-up: load the weights, one short request
            asyncio.run(wave(t, [[{"role": "system", "content": "Warm-up."}]], 0, args))
            t.ttft.clear(), t.cached.clear(), t.prompt.clear(), t.errors.clear()
        for turn in range(1, args.turns + 1):
            for t in targets:
                started = time.monotonic()
                asyncio.run(wave(t, histories[t.name], turn, args))
                log(
                    f"{t.name}: turn {turn} done in {time.monotonic() - started:.1f} s, TTFT p50 "
                    f"{1000 * p50(t.ttft.get(turn, [])):.0f} ms"
                )
    finally:
        for t in targets:
            t.stop()
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
    report(targets, args)
    if any(t.errors for t in targets):
        sys.exit(1)


if __name__ == "__main__":
    main()
