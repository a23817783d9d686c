"""Audio containers for speech engines' PCM: WAV with a streaming header, or raw PCM.

The answer streams while the audio is made, so the WAV header cannot know the length: it says
0xFFFFFFFF (the largest), as streaming TTS servers do; players and `wave`-style readers read to
the end of the data. Compressed formats (mp3, opus, aac, flac) would need an encoder dependency
and are refused with a list of these.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm"}
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
    try:
        first = await anext(pcm, b"")
        yield (wav_header(sample_rate) + first) if fmt == "wav" else first
        async for chunk in pcm:
            yield chunk
    finally:
        await pcm.aclose()  # type: ignore[attr-defined]
