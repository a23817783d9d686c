"""Runs the real `infergate serve` as a subprocess on a free port, with its own data dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

VENV_BIN = Path(sys.executable).parent
INFERGATE = str(VENV_BIN / "infergate")
ADMIN_TOKEN = "admin-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        data_dir: Path,
        catalog: str | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.args = args or []
        self.env = {
            **os.environ,
            "INFERGATE_DATA_DIR": str(data_dir),
            "INFERGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "INFERGATE_LEDGER_FLUSH_MS": "50",
            **(env or {}),
        }
        if catalog is not None:
            path = data_dir / "catalog.toml"
            data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(catalog)
            self.env["INFERGATE_CONFIG"] = str(path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"
        self.scheme = "https" if "--tls-cert" in self.args else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, verify: Any = True) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [INFERGATE, "serve", "--port", str(self.port), *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/{'ready' if wait_ready else 'health'}", verify=verify, timeout=2)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([INFERGATE, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"infergate {' '.join(args)} failed: {result.stderr}")
        return result

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def openai_client(self, key_name: str, timeout: float = 120) -> openai.OpenAI:
        """The unchanged `openai` SDK with a new model access key (no retries: a failure shows)."""
        secret = self.create_key(key_name)["secret_key"]
        return openai.OpenAI(base_url=f"{self.url}/v1/", api_key=secret, max_retries=0, timeout=timeout)

    def create_key(self, name: str = "test") -> dict[str, Any]:
        r = httpx.post(
            f"{self.url}/v2/gen-ai/models/api_keys", json={"name": name}, headers=self.admin(), verify=False
        )
        r.raise_for_status()
        return r.json()["api_key_info"]
