"""Audio containers for speech engines' PCM: WAV with a streaming header, raw PCM, and the
compressed formats mp3, flac, ogg (Vorbis) and opus (Ogg Opus) through libsndfile (`soundfile`,
in the speech extra).

WAV and PCM stream while the audio is made, so the WAV header cannot know the length: it says
0xFFFFFFFF (the largest), as streaming TTS servers do; players and `wave`-style readers read to
the end of the data. Compressed formats are encoded once the speech is synthesized (their
containers want the whole signal; speech synthesizes far faster than real time), in a thread.
Opus takes only 8/12/16/24/48 kHz, so its input is resampled to 24 kHz. aac is refused (no
encoder in libsndfile).
"""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import AsyncIterator

STREAMED = {"wav": "audio/wav", "pcm": "audio/pcm"}
# format -> (libsndfile container, subtype, media type)
COMPRESSED = {
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "ogg": ("OGG", "VORBIS", "audio/ogg"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
}
OPUS_RATE = 24_000
FORMATS = {**STREAMED, **{name: media for name, (_c, _s, media) in COMPRESSED.items()}}
UNKNOWN_LENGTH = 0xFFFFFFFF


def wav_header(sample_rate: int, channels: int = 1, sample_width: int = 2) -> bytes:
    """A 44-byte RIFF/WAVE header for 16-bit PCM of unknown length."""
    block_align = channels * sample_width
    return b"".join(
        (
            b"RIFF",
            struct.pack("<I", UNKNOWN_LENGTH),
            b"WAVE",
            b"fmt ",
            struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16),
            b"data",
            struct.pack("<I", UNKNOWN_LENGTH),
        )
    )


async def encode(pcm: AsyncIterator[bytes], fmt: str, sample_rate: int) -> AsyncIterator[bytes]:
    """`pcm` in the container `fmt`. The first PCM chunk is awaited before anything is yielded,
    so a request the engine refuses (an unknown voice) fails before any byte is sent."""
    if fmt not in FORMATS:
        raise ValueError(f"unsupported audio format {fmt!r}")
    if fmt in COMPRESSED:
        try:
            first = await anext(pcm, b"")
            chunks = [first] + [chunk async for chunk in pcm]
        finally:
            await pcm.aclose()  # type: ignore[attr-defined]
        yield await asyncio.to_thread(compress, b"".join(chunks), fmt, sample_rate)
        return
    try:
        first = await anext(pcm, b"")
        yield (wav_header(sample_rate) + first) if fmt == "wav" else first
        async for chunk in pcm:
            yield chunk
    finally:
        await pcm.aclose()  # type: ignore[attr-defined]


def compress(pcm: bytes, fmt: str, sample_rate: int) -> bytes:
    """16-bit mono PCM as a whole file in a compressed format."""
    import numpy as np
    import soundfile

    container, subtype, _media = COMPRESSED[fmt]
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
    if subtype == "OPUS" and sample_rate != OPUS_RATE:
        positions = np.arange(round(len(samples) * OPUS_RATE / sample_rate)) * (sample_rate / OPUS_RATE)
        samples = np.interp(positions, np.arange(len(samples)), samples).astype("<i2")
        sample_rate = OPUS_RATE
    out = io.BytesIO()
    soundfile.write(out, samples, sample_rate, format=container, subtype=subtype)
    return out.getvalue()
