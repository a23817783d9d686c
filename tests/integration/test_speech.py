"""POST /v1/audio/speech on a real server with the real piper and espeak-ng engines, through the
unchanged `openai` SDK; billing read back from the server's ledger (SQLite)."""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.ledger import ledger_row
from tests.support.server import ServerProcess

CATALOG = """
builtins = false

[[models]]
id = "piper-en-us-joe"
kind = "tts"
backend = "piper"
input_price = 15.0

[[models]]
id = "espeak-tts"
kind = "tts"
backend = "espeak"
input_price = 4.0

[[models]]
id = "espeak-de"
kind = "tts"
backend = "espeak"
voice = "de"

[[models]]
id = "a-chat-model"
backend = "openai"
base_url = "http://127.0.0.1:9/v1"
"""
TEXT = "Hello from infergate. This sentence was spoken by a local voice."


@pytest.fixture(scope="module")
def speech_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("speech"), CATALOG).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(speech_server: ServerProcess) -> openai.OpenAI:
    return speech_server.openai_client("speech")


def wav_samples(data: bytes) -> list[int]:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22_050)
    pcm = data[44:]
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm[: len(pcm) // 2 * 2]))


def assert_speech(values: list[int]) -> None:
    assert len(values) > 22_050 // 2 and max(abs(v) for v in values) > 2000


def test_openai_sdk_speech_is_a_wav_billed_per_character(
    speech_server: ServerProcess, client: openai.OpenAI
) -> None:
    audio = client.audio.speech.create(model="piper-en-us-joe", voice="alloy", input=TEXT)
    assert audio.response.headers["content-type"] == "audio/wav"
    assert_speech(wav_samples(audio.content))
    row = ledger_row(speech_server, audio.response.headers["x-request-id"])
    assert (row["endpoint"], row["status"], row["model"]) == ("audio.speech", 200, "piper-en-us-joe")
    assert row["input_tokens"] == len(TEXT) and row["output_tokens"] == 0
    assert row["cost_nano_usd"] == len(TEXT) * 15 * 1000  # $15 per 1M characters
    assert not row["estimated"]


def test_streaming_response_arrives_in_pieces(speech_server: ServerProcess, client: openai.OpenAI) -> None:
    text = " ".join([TEXT] * 3)
    with client.audio.speech.with_streaming_response.create(
        model="piper-en-us-joe", voice="joe", input=text, response_format="wav", speed=1.5
    ) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        chunks = list(response.iter_bytes())
        request_id = response.headers["x-request-id"]
    assert_speech(wav_samples(b"".join(chunks)))
    assert ledger_row(speech_server, request_id)["input_tokens"] == len(text)


def test_espeak_languages_pcm_and_unprefixed_route(
    speech_server: ServerProcess, client: openai.OpenAI
) -> None:
    english = client.audio.speech.create(model="espeak-tts", voice="en-us", input=TEXT, response_format="pcm")
    assert english.response.headers["content-type"] == "audio/pcm"
    assert len(english.content) > 22_050  # half a second of 16-bit samples
    row = ledger_row(speech_server, english.response.headers["x-request-id"])
    assert row["cost_nano_usd"] == len(TEXT) * 4 * 1000
    secret = speech_server.create_key("speech-raw")["secret_key"]
    german = httpx.post(
        f"{speech_server.url}/audio/speech",  # the spelling without /v1, as for the other routes
        json={"model": "espeak-de", "input": "Guten Morgen, wie geht es dir?"},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )
    assert german.status_code == 200, german.text
    assert_speech(wav_samples(german.content))


def test_models_lists_the_speech_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"piper-en-us-joe", "espeak-tts", "espeak-de"} <= ids


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "aac"}, "response_format"),
        ({"speed": 4.5}, "speed"),
        ({"speed": "fast"}, "speed"),
        ({"input": ""}, "input"),
        ({"input": "x" * 4097}, "input"),
        ({"voice": "no-such-voice"}, "voice"),
        ({"model": "a-chat-model"}, "model"),
    ],
)
def test_bad_requests_are_400_and_bill_nothing(
    speech_server: ServerProcess, client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "piper-en-us-joe", "input": TEXT, "voice": "alloy", **fields}
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(**body)
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    if param == "response_format":
        assert "wav, pcm, mp3, flac, ogg, opus" in error["message"]
    request_id = info.value.response.headers["x-request-id"]
    if param == "voice":  # refused by the engine before any audio: billed as a 400 costing nothing
        row = ledger_row(speech_server, request_id)
        assert (row["status"], row["input_tokens"], row["cost_nano_usd"]) == (400, 0, 0)


@pytest.mark.parametrize(
    ("fmt", "media", "rate"),
    [
        ("mp3", "audio/mpeg", 22_050),
        ("flac", "audio/flac", 22_050),
        ("ogg", "audio/ogg", 22_050),
        ("opus", "audio/ogg", 24_000),
    ],
)
def test_compressed_formats_decode_to_the_speech(
    speech_server: ServerProcess, client: openai.OpenAI, fmt: str, media: str, rate: int
) -> None:
    import io

    import soundfile

    answer = client.audio.speech.with_raw_response.create(
        model="piper-en-us-joe",
        input=TEXT,
        voice="alloy",
        response_format=fmt,  # type: ignore[arg-type]
    )
    assert answer.headers["content-type"] == media
    samples, sample_rate = soundfile.read(io.BytesIO(answer.content), dtype="int16")
    assert sample_rate == rate
    assert len(samples) > rate  # over a second of speech
    assert abs(samples.astype("int32")).max() > 1000  # not silence
    row = ledger_row(speech_server, answer.headers["x-request-id"])
    assert row["status"] == 200 and row["input_tokens"] == len(TEXT)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.audio.speech.create(model="no-such-tts", voice="alloy", input=TEXT)
    assert info.value.code == "model_not_found"


def test_without_a_key_is_401(speech_server: ServerProcess) -> None:
    r = httpx.post(f"{speech_server.url}/v1/audio/speech", json={"model": "espeak-tts", "input": "hi"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_client_gone_mid_speech_is_billed_499(speech_server: ServerProcess) -> None:
    secret = speech_server.create_key("speech-gone")["secret_key"]
    text = " ".join([TEXT] * 40)
    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "POST",
            f"{speech_server.url}/v1/audio/speech",
            json={"model": "piper-en-us-joe", "input": text},
            headers={"Authorization": f"Bearer {secret}"},
        ) as r,
    ):
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        assert next(r.iter_raw())  # the first sentence, then the client hangs up
    row = ledger_row(speech_server, request_id, timeout=30)
    assert row["status"] == 499 and row["input_tokens"] == len(text)
