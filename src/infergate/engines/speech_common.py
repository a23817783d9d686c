"""What the speech engines share: OpenAI voice names, and running blocking synthesis steps off the
event loop one at a time per engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# OpenAI's voice names: clients written for OpenAI send these; they get the model's default voice.
OPENAI_VOICES = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "onyx",
        "nova",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    }
)


class SerialRunner:
    """Runs blocking steps in worker threads, one at a time: synthesis is CPU-bound, so two requests
    on one engine take turns step by step (a sentence each) instead of fighting for the cores.
    A thread lock, not an asyncio one: a step whose awaiting request was cancelled still finishes
    in its thread while holding it."""

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self.lock = lock or threading.Lock()

    def _locked(self, step: Callable[[], T]) -> T:
        with self.lock:
            return step()

    async def run(self, step: Callable[[], T]) -> T:
        return await asyncio.to_thread(self._locked, step)
