"""Token counting for when a backend reports no usage (the ledger marks those rows estimated).

Uses the packaged SmolLM2 BPE vocabulary through llama.cpp's low-level API (vocab only: no
weights), a real tokenizer close to most modern BPE vocabularies; falls back to ~4 characters per
token. Not `llama_cpp.Llama(verbose=False)`: that points the whole process's stdout and stderr at
/dev/null while it loads, and other threads' log lines vanish.

Counting megabytes takes a while: callers off the event loop only (metering.Meter.estimate).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

_lock = threading.Lock()
_vocab: Any = None
_tried = False


def _load() -> Any:
    global _vocab, _tried
    with _lock:
        if not _tried:
            _tried = True
            try:
                import llama_cpp as L

                from infergate.catalog import packaged_smollm2_path

                path = packaged_smollm2_path()
                if path:
                    lib_log = logging.getLogger("llama-cpp-python")
                    if lib_log.level == logging.NOTSET:  # llama.cpp's load chatter stays out
                        lib_log.setLevel(logging.ERROR)
                    params = L.llama_model_default_params()
                    params.vocab_only = True
                    model = L.llama_model_load_from_file(path.encode(), params)
                    if model:
                        _vocab = L.llama_model_get_vocab(model)  # the model lives as long as we do
            except Exception:
                _vocab = None
    return _vocab


# Past this many characters a text is counted from samples (start, middle, end) and scaled: an
# estimate anyway, and exact counting of megabytes costs seconds of CPU per request (~6 s for 4 MiB).
SAMPLED_ABOVE_CHARS = 262_144
SAMPLE_CHARS = 65_536


def count_tokens(text: str) -> int:
    if not text:
        return 0
    vocab = _load()
    if vocab is None:
        return max(1, math.ceil(len(text) / 4))
    if len(text) > SAMPLED_ABOVE_CHARS:
        middle = (len(text) - SAMPLE_CHARS) // 2
        starts = (0, middle, len(text) - SAMPLE_CHARS)
        sampled = sum(_count(vocab, text[i : i + SAMPLE_CHARS]) for i in starts)
        return round(sampled * len(text) / (3 * SAMPLE_CHARS))
    return _count(vocab, text)


def _count(vocab: Any, text: str) -> int:
    import llama_cpp as L

    data = text.encode("utf-8", "replace")
    # llama_tokenize returns minus the needed size when the buffer is short: count without one
    n = L.llama_tokenize(vocab, data, len(data), None, 0, False, False)
    return -n if n < 0 else n


def chat_framing_tokens(messages: int) -> int:
    """Tokens a chat template adds around `messages` messages (role markers, the reply's opening)."""
    return 4 * messages + 2


def warm_up() -> None:
    """Load the vocabulary now (a thread at start), not on the first request that needs it."""
    _load()
