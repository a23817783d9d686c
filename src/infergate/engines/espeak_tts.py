"""Text to speech in many languages with espeak-ng (GPL-3.0), through ctypes.

The library and its data come from the `espeakng-loader` wheel (the `speech` extra), so no system
package is needed. espeak-ng is one global instance per process: it is initialized once, in
synchronous mode (audio handed to a callback, nothing played), and every synthesis of every
espeak model takes its turn under one lock. `voice` is an espeak voice name: a language such as
"en-us", "de", "fr", "es", "pt-br" or "cmn", optionally with a variant ("en-us+f3").
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import espeakng_loader

from infergate.catalog import ModelSpec
from infergate.engines.base import SpeechEngine, SpeechRequest
from infergate.engines.speech_common import OPENAI_VOICES, SerialRunner
from infergate.errors import InvalidRequest

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000  # espeak-ng calls exit() on a bad data path without it
CHARS_UTF8 = 1
POS_CHARACTER = 1
PARAM_RATE = 1
DEFAULT_RATE, MIN_RATE, MAX_RATE = 175, 80, 450  # words per minute; espeak-ng's own bounds
DEFAULT_VOICE = "en-us"
BUFFER_MS = 100  # audio handed to the callback (and streamed) in pieces of this length

_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_RUNNER = SerialRunner()  # one espeak-ng per process: one synthesis at a time, all models
_state: dict[str, object] = {}  # the library, its sample rate and the live callback (kept referenced)
_sink: Callable[[bytes], bool] | None = None  # where the running synthesis sends audio (under the lock)
_pending: set[asyncio.Future[None]] = set()  # syntheses whose request left before they ended


class UnknownVoice(Exception):
    """espeak-ng has no voice of that name."""


def _on_audio(wav: ctypes._Pointer, samples: int, _events: int | None) -> int:
    if wav and samples > 0 and _sink is not None and not _sink(ctypes.string_at(wav, samples * 2)):
        return 1  # abort: the request is gone
    return 0


def _library() -> tuple[ctypes.CDLL, int]:
    """Load and initialize espeak-ng once (call under the runner's lock)."""
    if "lib" not in _state:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        # the folder that holds espeak-ng-data
        home = os.path.dirname(espeakng_loader.get_data_path()).encode()
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, home, INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialize with data in {home.decode()}")
        callback = _CALLBACK_TYPE(_on_audio)
        lib.espeak_SetSynthCallback(callback)
        _state.update(lib=lib, rate=rate, callback=callback)
    return _state["lib"], _state["rate"]  # type: ignore[return-value]


def _synthesize(text: str, voice: str, rate: int, sink: Callable[[bytes], bool]) -> None:
    """Blocking: speak `text` into `sink` (under the runner's lock)."""
    global _sink
    lib, _ = _library()
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise UnknownVoice(voice)
    lib.espeak_SetParameter(PARAM_RATE, rate, 0)
    data = text.replace("\x00", " ").encode()
    _sink = sink
    try:
        lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
    finally:
        _sink = None


class EspeakEngine(SpeechEngine):
    def __init__(self, spec: ModelSpec, data_dir: Path | None = None) -> None:
        super().__init__(spec, data_dir)
        self.default_voice = spec.voice or DEFAULT_VOICE

    async def start(self) -> None:
        _, self.sample_rate = await _RUNNER.run(_library)

    @staticmethod
    def rate(speed: float) -> int:
        """espeak's words per minute for an OpenAI speed; espeak-ng bounds it to 80..450 (speed
        about 0.46..2.57)."""
        return max(MIN_RATE, min(MAX_RATE, round(DEFAULT_RATE * speed)))

    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        voice = request.voice
        if voice is None or voice.lower() in OPENAI_VOICES:
            voice = self.default_voice
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def put(item: bytes | BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutdown): nobody listens
                stop.set()

        def sink(pcm: bytes) -> bool:
            put(pcm)
            return not stop.is_set()

        def work() -> None:
            try:
                if not stop.is_set():
                    _synthesize(request.text, voice, self.rate(request.speed), sink)
                put(None)
            except BaseException as exc:
                put(exc)

        task = asyncio.ensure_future(_RUNNER.run(work))
        started = False
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, UnknownVoice):
                    raise InvalidRequest(
                        f"The model '{self.spec.id}' has no voice '{voice}': espeak voices are language "
                        "names such as en-us, en-gb, de, fr, es, it, pt-br, ru, cmn or hi, optionally "
                        "with a variant (en-us+f3).",
                        param="voice",
                        code="invalid_voice",
                    )
                if isinstance(item, BaseException):
                    raise item
                if not started:
                    started = True
                    request.context.usage.input_tokens = len(request.text)  # billed once speech starts
                yield item
            if not started:
                request.context.usage.input_tokens = len(request.text)
        finally:
            stop.set()  # the callback aborts the synthesis at its next piece
            if not task.done():  # keep it referenced until its thread ends
                _pending.add(task)
                task.add_done_callback(_pending.discard)
