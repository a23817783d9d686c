#!/usr/bin/env python3
"""Latency of `GET /health` while 8 clients send 4 MiB prompts, before and after a change (issue 9).

Before: the code at `--before` (default f663611, the core before the hardening), checked out with
`git worktree add --detach` into a temp dir (removed at the end); after: this working tree. Both run
from the same venv's python with PYTHONPATH=<tree>/src, side by side, each with its own data dir,
admin token, key and catalog: model `bench-nousage` on a bench/mock_upstream.py without usage in its
answers (the gateway counts the 4 MiB itself), `bench-usage` on one that reports usage. 8 aiohttp
clients POST distinct 4 MiB prompts back to back; a prober in its own process sends `GET /health`
every 10 ms, open loop. Windows alternate between the two servers; a loaded server is restarted
after its window. bench/README.md has the details.

Usage: .venv/bin/python bench/health_under_load.py [--duration 10] [--rounds 2] [--before f663611]
Env:   BENCH_HEALTH_DURATION or BENCH_DURATION (seconds per target and load, default 10; 2 with
       BENCH_QUICK=1), BENCH_HEALTH_BEFORE (the "before" commit), BENCH_KEEP=1 (keep the temp dir).
Prints a markdown report on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
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
PY = sys.executable
HOST = "127.0.0.1"
CLIENTS = 8
PROMPT_BYTES = 4 * 1024 * 1024
MAX_BODY = 16 * 1024 * 1024
PROBE_TIMEOUT = 20.0  # a probe slower than this counts as an error (at this latency)
SCENARIOS = (("bench-nousage", "none: gateway counts the 4 MiB"), ("bench-usage", "reported by upstream"))


def log(msg: str) -> None:
    print(f"[health] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(q / 100 * len(ordered))) - 1)]


# --------------------------------------------------------------------------------------------
# the prober: its own process, so the load clients' work never delays a probe on our side


async def probe_window(session: aiohttp.ClientSession, url: str, seconds: float, every: float) -> dict:
    lat: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as r:
                await r.read()
                ok = r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        lat.append((time.perf_counter() - t0) * 1000)
        errors += not ok

    tasks = []
    start = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) - start < seconds:
        tasks.append(asyncio.create_task(one()))
        n += 1
        await asyncio.sleep(max(0.0, start + n * every - now))  # fixed schedule, not "every after the last"
    await asyncio.gather(*tasks)
    return {"lat": lat, "errors": errors}


async def prober_main() -> None:
    """Reads `URL SECONDS EVERY_S` lines on stdin, answers each with one JSON line on stdout."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            url, seconds, every = line.split()
            result = await probe_window(session, url, float(seconds), float(every))
            print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# servers


@dataclass
class Target:
    name: str  # "before" / "after"
    label: str  # e.g. "before f663611"
    src: Path
    port: int = 0
    key: str = ""
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    results: dict = field(default_factory=dict)  # (scenario, "idle"|"load") -> Window

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass
class Window:
    lat: list[float] = field(default_factory=list)
    probe_errors: int = 0
    seconds: float = 0.0
    done: int = 0
    load_errors: int = 0
    first_error: str = ""


def server_env(t: Target, work: Path, catalog: Path) -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(t.src),
        INFERGATE_DATA_DIR=str(work / f"data-{t.name}"),
        INFERGATE_CONFIG=str(catalog),
        INFERGATE_ADMIN_TOKEN=f"adm-health-{t.name}-{os.getpid()}",
        INFERGATE_MAX_BODY_BYTES=str(MAX_BODY),
    )
    return env


# `python -m infergate.cli` works at f663611 too (it has the __main__ guard); -c does not depend on it
CLI = [PY, "-c", "import sys; from infergate.cli import main; sys.exit(main())"]


def start_server(t: Target, work: Path, catalog: Path) -> None:
    """Starts (or restarts: same data dir and key) the target's server; a new key the first time."""
    env = server_env(t, work, catalog)
    if not t.key:  # PYTHONPATH must win over the venv's editable install of the working tree
        where = subprocess.run(
            [PY, "-c", "import infergate; print(infergate.__file__)"], env=env, capture_output=True, text=True
        ).stdout.strip()
        if not where.startswith(str(t.src) + os.sep):
            raise RuntimeError(f"{t.label}: infergate imports from {where!r}, not from {t.src}")
    t.port = free_port()
    t.log_path = work / f"server-{t.name}.log"
    args = ["serve", "--host", HOST, "--port", str(t.port), "--workers", "1"]
    with open(t.log_path, "a") as out:
        t.proc = subprocess.Popen(
            [*CLI, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if t.proc.poll() is not None:
            raise RuntimeError(f"{t.label} exited ({t.proc.returncode}): {tail(t.log_path)}")
        try:
            with socket.create_connection((HOST, t.port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    break
        except OSError:
            pass
        time.sleep(0.25)
    else:
        raise RuntimeError(f"{t.label} did not answer /health in 120 s: {tail(t.log_path)}")
    if t.key:
        return
    made = subprocess.run(
        [*CLI, "keys", "create", "health-bench"], env=env, capture_output=True, text=True, timeout=120
    )
    try:
        t.key = json.loads(made.stdout)["secret_key"]
    except (ValueError, KeyError):
        raise RuntimeError(
            f"{t.label}: keys create failed: {made.stdout[-300:]} {made.stderr[-300:]}"
        ) from None


def wait_port(port: int, proc: subprocess.Popen, what: str, limit: float = 15) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} in {limit:g} s")


def tail(path: Path | None, n: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    return " | ".join(path.read_text(errors="replace").splitlines()[-n:])[-1500:]


def stop(proc: subprocess.Popen | None, grace: float = 10) -> None:
    """SIGTERM our own process group (start_new_session), SIGKILL after `grace` s (at once with 0)."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        if wait == 0:
            continue
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------------------------
# load


class Prompts:
    """Distinct 4 MiB prompts (a counter in front of the same text: nothing can be cached)."""

    def __init__(self) -> None:
        rng = random.Random(9)
        words = " ".join(
            (
                "the of and to in is that for it as with was on be by this are from at or an which have not",
                "gateway token prompt model request latency stream cache ledger upstream usage event loop",
                "server client health answer count billing budget window worker thread batch spill replay",
                "quickly slowly although because however therefore meanwhile, indeed. Moreover; (see below)",
                "1024 3.14 2026-11-30 e-mail naïve café über straße 東京 数据 ключ ok? yes! no: maybe",
            )
        ).split(" ")
        parts, size = [], 0
        while size < PROMPT_BYTES - 16:  # 16: the counter; JSON-safe words, "\\n" is JSON's newline
            w = rng.choice(words) + (" " if rng.random() > 0.08 else "\\n")
            parts.append(w)
            size += len(w.encode())
        self.text = "".join(parts).encode()
        self.n = 0

    def body(self, model: str) -> bytes:
        self.n += 1
        head = f'{{"model":"{model}","max_tokens":16,"messages":[{{"role":"user","content":"{self.n:015d} '
        return head.encode() + self.text + b'"}]}'


async def load_client(
    session: aiohttp.ClientSession, t: Target, model: str, prompts: Prompts, w: Window, stop_at: asyncio.Event
) -> None:
    headers = {"Authorization": f"Bearer {t.key}", "Content-Type": "application/json"}
    while not stop_at.is_set():
        try:
            async with session.post(
                f"{t.base}/v1/chat/completions", data=prompts.body(model), headers=headers
            ) as r:
                text = await r.read()
                if r.status == 200:
                    w.done += 1
                else:
                    w.load_errors += 1
                    w.first_error = w.first_error or f"HTTP {r.status}: {text[:200].decode(errors='replace')}"
        except aiohttp.ClientError as exc:
            w.load_errors += 1
            w.first_error = w.first_error or f"{type(exc).__name__}: {exc}"[:200]
            await asyncio.sleep(0.1)  # a server that went away: no busy loop of refused connections


async def check(t: Target, notes: list[str]) -> None:
    """One small request per model: loads what a first request loads, and shows the setup works."""
    headers = {"Authorization": f"Bearer {t.key}"}
    async with aiohttp.ClientSession() as session:
        for model, _ in SCENARIOS:
            body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
            try:
                async with session.post(f"{t.base}/v1/chat/completions", json=body, headers=headers) as r:
                    text = await r.text()
                    if r.status != 200 or "Hello from the mock" not in text:
                        notes.append(f"{t.label}, {model} sample: HTTP {r.status}: `{text[:300]}`")
            except aiohttp.ClientError as exc:
                notes.append(f"{t.label}, {model} sample failed: {type(exc).__name__}: {exc}")


class Prober:
    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            PY, __file__, "--prober", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )

    async def window(self, url: str, seconds: float, every: float) -> dict:
        assert self.proc and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{url} {seconds} {every}\n".encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the prober process died")
        return json.loads(line)

    async def close(self) -> None:
        if self.proc and self.proc.returncode is None:
            assert self.proc.stdin
            self.proc.stdin.close()
            await self.proc.wait()


async def segment(
    t: Target, model: str | None, seconds: float, every: float, prober: Prober, prompts: Prompts, w: Window
) -> None:
    """One measured window on one target: with model None, /health alone (idle)."""
    stop_at = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        clients = []
        if model is not None:
            clients = [
                asyncio.create_task(load_client(session, t, model, prompts, w, stop_at))
                for _ in range(CLIENTS)
            ]
            await asyncio.sleep(min(1.0, seconds / 4))  # the first bodies are on their way
        t0 = time.perf_counter()
        result = await prober.window(f"{t.base}/health", seconds, every)
        stop_at.set()
        for c in clients:
            c.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    w.seconds += time.perf_counter() - t0
    w.lat += result["lat"]
    w.probe_errors += result["errors"]


# --------------------------------------------------------------------------------------------
# report


def timed_out(x: float) -> bool:
    return x >= PROBE_TIMEOUT * 1000


def fmt(x: float) -> str:
    if timed_out(x):
        return f"≥ {PROBE_TIMEOUT * 1000:.0f} (timeout)"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def rate(w: Window | None, key: str) -> str:
    """4 MiB prompts answered per second of the window."""
    return f"{w.done / w.seconds:.2f}" if w and w.seconds and key != "idle" else ""


def ratio(a: float, b: float) -> str:
    if b <= 0:
        return "n/a"
    return f"**{'≥ ' if timed_out(a) else ''}{a / b:.1f}x**"


def report(targets: list[Target], args: argparse.Namespace, notes: list[str]) -> None:
    before = next((t for t in targets if t.name == "before"), None)
    after = next(t for t in targets if t.name == "after")
    print(
        f"`GET /health` every {args.probe_ms:g} ms (open loop, own process) while {CLIENTS} clients POST "
        f"distinct {PROMPT_BYTES >> 20} MiB prompts to `/v1/chat/completions` (aiohttp, back to back); "
        f"{args.duration:g} s per target and load in {args.rounds} interleaved round(s); 1 worker each, "
        "default server, nothing pinned. "
        f"Targets: **{before.label if before else 'before (not run)'}**, **{after.label}**."
    )
    print()
    print(
        "| upstream usage | before p50 ms | after p50 ms | p50 before/after | before p99 ms | after p99 ms "
        "| p99 before/after | 4 MiB req/s before | after |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key, desc in [*SCENARIOS, ("idle", "idle (no load)")]:
        wa = after.results.get(key)
        wb = before.results.get(key) if before else None
        if not wa or not wa.lat:
            continue
        a50, a99 = percentile(wa.lat, 50), percentile(wa.lat, 99)
        b50 = b99 = 0.0
        if wb and wb.lat:
            b50, b99 = percentile(wb.lat, 50), percentile(wb.lat, 99)
        print(
            f"| {desc} | {fmt(b50) if wb else ''} | {fmt(a50)} | {ratio(b50, a50) if wb else ''} "
            f"| {fmt(b99) if wb else ''} | {fmt(a99)} | {ratio(b99, a99) if wb else ''} "
            f"| {rate(wb, key)} | {rate(wa, key)} |"
        )
    print()
    print(
        "| target | load | probes | probe err. | p50 ms | p99 ms | max ms | mean ms | 4 MiB done | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in targets:
        for key, _ in [*SCENARIOS, ("idle", "")]:
            w = t.results.get(key)
            if not w or not w.lat:
                continue
            print(
                f"| {t.name} | {key} | {len(w.lat)} | {w.probe_errors} | {fmt(percentile(w.lat, 50))} "
                f"| {fmt(percentile(w.lat, 99))} | {fmt(max(w.lat))} | {fmt(statistics.fmean(w.lat))} "
                f"| {w.done if key != 'idle' else ''} | {w.load_errors if key != 'idle' else ''} |"
            )
            if w.first_error:
                notes.append(
                    f"{t.label}, {key}: {w.load_errors} failed prompt requests, first: `{w.first_error}`"
                )
    print()
    print(
        "Ratios > 1 mean the change made `/health` faster under load. Probe errors = non-200 or no answer "
        f"within {PROBE_TIMEOUT:g} s (counted at that latency). The machine is shared and noisy: compare the "
        "ratios of one run, not absolute figures across runs."
    )
    if notes:
        print()
        print("Notes:")
        print()
        for n in notes:
            print(f"- {n}")


# --------------------------------------------------------------------------------------------


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="ighealth."))
    worktree = work / "before"
    notes: list[str] = []
    mocks: list[subprocess.Popen] = []
    targets: list[Target] = []
    prober = Prober()
    have_worktree = False
    short = git("rev-parse", "--short", "HEAD").stdout.strip()
    dirty = " (dirty)" if git("status", "--porcelain", "--untracked-files=no").stdout.strip() else ""
    try:
        ports = {}
        for model, flags in (("bench-nousage", ["--no-usage"]), ("bench-usage", [])):
            ports[model] = free_port()
            with open(work / f"mock-{model}.log", "w") as out:
                mocks.append(
                    subprocess.Popen(
                        [PY, str(HERE / "mock_upstream.py"), str(ports[model]), *flags],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        for m, port in zip(mocks, ports.values(), strict=True):
            wait_port(port, m, "mock_upstream.py")
        catalog = work / "catalog.toml"
        catalog.write_text(
            "builtins = false\n"
            + "".join(
                f'\n[[models]]\nid = "{m}"\nkind = "chat"\nbackend = "openai"\n'
                f'base_url = "http://{HOST}:{p}/v1"\ninput_price = 1.0\noutput_price = 2.0\n'
                for m, p in ports.items()
            )
        )
        if args.before:
            made = git("worktree", "add", "--detach", str(worktree), args.before)
            if made.returncode == 0:
                have_worktree = True
                rev = git("-C", str(worktree), "rev-parse", "--short", "HEAD").stdout.strip()
                targets.append(Target("before", f"before ({rev})", worktree / "src"))
            else:
                notes.append(
                    f"no **before** rows: `git worktree add {args.before}` failed: {made.stderr.strip()}"
                )
        targets.append(
            Target(
                "after",
                f"after (working tree at {short}{' + uncommitted changes' if dirty else ''})",
                REPO / "src",
            )
        )
        for t in targets:
            log(f"starting {t.label} (PYTHONPATH={t.src})")
            start_server(t, work, catalog)
        for t in targets:
            await check(t, notes)
        await prober.start()
        prompts = Prompts()
        every = args.probe_ms / 1000
        plan = [("idle", None)] + [(m, m) for m, _ in SCENARIOS]
        for key, model in plan:
            rounds = 1 if model is None else args.rounds
            seconds = (min(2.0, args.duration) if model is None else args.duration) / rounds
            for r in range(rounds):
                # alternate who goes first, so neither side always follows the other's leftovers
                order = targets if r % 2 == 0 else targets[::-1]
                for t in order:
                    log(f"{t.name}: {key} round {r + 1}/{rounds} ({seconds:.1f} s)")
                    w = t.results.setdefault(key, Window())
                    await segment(t, model, seconds, every, prober, prompts, w)
                    if model is not None:
                        # a fresh process instead of waiting for the leftovers: counting the tokens of
                        # the prompts cut off at the window's end can take a minute of CPU
                        crashed = t.proc.poll() if t.proc else None
                        if crashed is not None:
                            notes.append(f"{t.label} exited ({crashed}) during {key}: {tail(t.log_path)}")
                        stop(t.proc, grace=0)
                        start_server(t, work, catalog)
                        await check(t, notes)
        for t in targets:
            if t.proc and t.proc.poll() is not None:
                notes.append(
                    f"{t.label} server exited with {t.proc.returncode} during the run: {tail(t.log_path)}"
                )
        report(targets, args, notes)
        return 0
    finally:
        await prober.close()
        for t in targets:
            stop(t.proc)
        for m in mocks:
            stop(m)
        if have_worktree:
            removed = git("worktree", "remove", "--force", str(worktree))
            if removed.returncode != 0:
                log(f"git worktree remove failed: {removed.stderr.strip()}")
                git("worktree", "prune")
        if os.environ.get("BENCH_KEEP", "0") != "0":
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    if sys.argv[1:] == ["--prober"]:
        asyncio.run(prober_main())
        return 0
    quick = os.environ.get("BENCH_QUICK", "0") != "0"
    default_duration = os.environ.get("BENCH_HEALTH_DURATION") or os.environ.get("BENCH_DURATION")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=float(default_duration or (2 if quick else 10)))
    parser.add_argument(
        "--rounds", type=int, default=1 if quick else 2, help="interleaved segments per target"
    )
    parser.add_argument("--probe-ms", type=float, default=10.0, help="one GET /health every this many ms")
    parser.add_argument(
        "--before",
        default=os.environ.get("BENCH_HEALTH_BEFORE", "f663611"),
        help="commit for the 'before' server ('' to measure only the working tree)",
    )
    args = parser.parse_args()
    try:
        return asyncio.run(run(args))
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:
        print(f"\nhealth_under_load.py failed: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
