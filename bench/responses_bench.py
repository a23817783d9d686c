"""/v1/responses with store: true against /v1/chat/completions, on the mock upstream, at c=64.

    .venv/bin/python bench/responses_bench.py [--duration 6] [--concurrency 64]

One infergate (`infergate serve --workers 1`, SQLite in a temp data dir, pinned to core 1) in
front of bench/mock_upstream.py (pinned to core 0 with wrk). wrk sends, in turn, a small chat
completion and the same prompt as a Responses request with `store: true` (each response is then
durably stored: row, input and output items, group-committed off the request path). Goal: the
responses rate is at least 70 % of chat's. After the run the stored responses are counted, to show
every 200 was stored. A `store: false` row shows what storing costs. Prints a markdown table;
exit 1 only when a part could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = REPO / ".venv" / "bin"
GOAL = 0.70
LUA = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%%.1f p50_ms=%%.3f p99_ms=%%.3f errors=%%d non2xx=%%d requests=%%d\\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, summary.requests))
end
"""
CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
RESPONSES = {"model": "mock-model", "input": "hi", "max_output_tokens": 16, "store": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no answer from {url}")


def pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def wrk(url: str, key: str, body: dict, concurrency: int, duration: int, work: Path) -> dict[str, float]:
    script = work / f"bench-{abs(hash(url))}.lua"
    script.write_text(LUA % json.dumps(body))
    cmd = [*pinned(0), "wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "5s", "--latency"]
    out = subprocess.run(
        [*cmd, "-s", str(script), url], capture_output=True, text=True, env={**os.environ, "BENCH_KEY": key}
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")), "")
    if not line:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-300:]} {out.stderr[-300:]}")
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stored_responses(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "infergate.db") as db:
        return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def main() -> int:
    quick = os.environ.get("BENCH_QUICK", "0") not in ("", "0")
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--duration", type=int, default=int(os.environ.get("BENCH_DURATION", 2 if quick else 6))
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1 if quick else 2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is missing (bench/gateway_bench.sh installs it with apt-get)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="igresp."))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        mock_port, ig_port = free_port(), free_port()
        mock = subprocess.Popen(
            [*pinned(0), str(VENV_BIN / "python"), str(HERE / "mock_upstream.py"), str(mock_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(mock)
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models", mock)
        (work / "catalog.toml").write_text(
            f'builtins = false\n\n[[models]]\nid = "mock-model"\nbackend = "openai"\n'
            f'base_url = "http://127.0.0.1:{mock_port}/v1"\ninput_price = 1.0\noutput_price = 2.0\n'
        )
        env = {
            **os.environ,
            "INFERGATE_DATA_DIR": str(work / "data"),
            "INFERGATE_CONFIG": str(work / "catalog.toml"),
            "INFERGATE_ADMIN_TOKEN": "adm-responses-bench",
        }
        log = (work / "infergate.log").open("wb")
        ig = subprocess.Popen(
            [
                *pinned(1),
                str(VENV_BIN / "infergate"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(ig_port),
                "--workers",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(ig)
        wait_http(f"http://127.0.0.1:{ig_port}/health", ig)
        made = subprocess.run(
            [str(VENV_BIN / "infergate"), "keys", "create", "bench"], env=env, capture_output=True, text=True
        )
        key = json.loads(made.stdout)["secret_key"]
        base = f"http://127.0.0.1:{ig_port}/v1"
        targets = (
            ("chat.completions", "/chat/completions", CHAT),
            ("responses, store: true", "/responses", RESPONSES),
            ("responses, store: false", "/responses", {**RESPONSES, "store": False}),
        )
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):  # alternating rounds, best of each: noise only slows a run down
            for name, path, body in targets:
                wrk(base + path, key, body, args.concurrency, 1, work)  # warm-up
                cpu = cpu_seconds(ig.pid)
                result = wrk(base + path, key, body, args.concurrency, args.duration, work)
                result["cpu_us"] = (cpu_seconds(ig.pid) - cpu) * 1e6 / max(result["requests"], 1)
                if name not in best or result["rps"] > best[name]["rps"]:
                    best[name] = result
        rows = [(name, best[name]) for name, _, _ in targets]
        time.sleep(1)  # the last group commit
        stored = stored_responses(work / "data")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"infergate `serve --workers 1` on core 1, mock upstream and wrk on core 0; c={args.concurrency}, "
        f"{args.duration}s per run after a 1 s warm-up, best of {args.rounds} alternating round(s), SQLite.\n"
    )
    print("| endpoint | req/s | p50 ms | p99 ms | CPU µs/req | errors | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        cells = [f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['cpu_us']:.0f}"]
        print(f"| {name} | {' | '.join(cells)} | {r['errors']:.0f} | {r['non2xx']:.0f} |")
    chat, resp = rows[0][1], rows[1][1]
    ratio = resp["rps"] / chat["rps"] if chat["rps"] else 0.0
    verdict = "PASS" if ratio >= GOAL else "MISS"
    print(f"\n- responses/chat req/s: **{ratio:.2f}** (goal >= {GOAL:.2f}: {verdict})")
    if resp["cpu_us"]:
        print(f"- chat/responses CPU per request: **{chat['cpu_us'] / resp['cpu_us']:.2f}** (steadier)")
    print(f"- responses stored after the runs (warm-ups included): {stored}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
