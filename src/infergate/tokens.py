"""Token counting for when an upstream reports no usage (the ledger marks those rows estimated).

Uses the packaged SmolLM2 BPE vocabulary through llama.cpp (vocab only: no weights loaded), a
real tokenizer close to most modern BPE vocabularies; falls back to ~4 characters per token.
"""

from __future__ import annotations

import math
import threading
from typing import Any

_lock = threading.Lock()
_tokenizer: Any = None
_tried = False


def _load() -> Any:
    global _tokenizer, _tried
    with _lock:
        if not _tried:
            _tried = True
            try:
                import llama_cpp

                from infergate.catalog import packaged_smollm2_path

                path = packaged_smollm2_path()
                if path:
                    _tokenizer = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
            except Exception:
                _tokenizer = None
    return _tokenizer


def count_tokens(text: str) -> int:
    if not text:
        return 0
    tokenizer = _load()
    if tokenizer is not None:
        return len(tokenizer.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False))
    return max(1, math.ceil(len(text) / 4))


def chat_framing_tokens(messages: int) -> int:
    """Tokens a chat template adds around `messages` messages (role markers, the reply's opening)."""
    return 4 * messages + 2


def count_chat_prompt(messages: list[Any]) -> int:
    """Prompt tokens of a chat: the texts plus the role framing. Slow for large prompts: call it
    off the event loop (metering.Meter.estimate does)."""
    return sum(count_tokens(m.text()) for m in messages) + chat_framing_tokens(len(messages))


def warm_up() -> None:
    """Load the vocabulary now (a thread at start), not on the first request that needs it."""
    _load()
