"""A loaded GGUF for the llama.cpp engine: weights, one context with `parallel` KV streams, and
the tokenizer / chat template helpers. Everything here is used from the model's worker thread.

Weights are shared: two catalog entries pointing at the same file load it once (refcounted),
each with its own context. The KV cache is not unified: every sequence slot owns a stream of
`n_ctx` cells, so `n_ctx` is the per-request window and sequences never evict each other.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from typing import Any

import jinja2
import llama_cpp as L
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from infergate.engines.llama.prompt import CHATML_TEMPLATE
from infergate.engines.llama.sampling import token_logprobs
from infergate.errors import InvalidRequest

log = logging.getLogger("infergate.engines.llama.engine")

N_BATCH = 512  # tokens per llama_decode call; also the prefill chunk budget per step

_lock = threading.Lock()
_backend_ready = False
_weights: dict[str, _Weights] = {}


@dataclass
class _Weights:
    model: Any
    refs: int


def _acquire_weights(path: str) -> Any:
    global _backend_ready
    with _lock:
        if not _backend_ready:
            # llama-cpp-python prints every llama.cpp log line unless its logger is configured
            lib_log = logging.getLogger("llama-cpp-python")
            if lib_log.level == logging.NOTSET:
                lib_log.setLevel(logging.ERROR)
            L.llama_backend_init()
            _backend_ready = True
        held = _weights.get(path)
        if held is None:
            params = L.llama_model_default_params()
            params.n_gpu_layers = 0
            model = L.llama_model_load_from_file(path.encode(), params)
            if not model:
                raise RuntimeError(f"llama.cpp could not load {path}")
            held = _weights[path] = _Weights(model, 0)
        held.refs += 1
        return held.model


def _release_weights(path: str) -> None:
    with _lock:
        held = _weights.get(path)
        if held is None:
            return
        held.refs -= 1
        if held.refs <= 0:
            L.llama_model_free(held.model)
            del _weights[path]


class LoadedModel:
    """Weights + context + batch of one engine. Not thread-safe: the worker thread owns it."""

    def __init__(
        self, path: str, n_ctx: int, parallel: int, threads: int, chat_template: str | None = None
    ) -> None:
        self.path = path
        self.model = _acquire_weights(path)
        self.ctx: Any = None
        self.batch: Any = None
        try:
            self.vocab = L.llama_model_get_vocab(self.model)
            self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
            n_ctx = min(n_ctx, int(L.llama_model_n_ctx_train(self.model)) or n_ctx)
            cp = L.llama_context_default_params()
            cp.n_ctx = n_ctx * parallel
            cp.n_batch = cp.n_ubatch = N_BATCH
            cp.n_seq_max = parallel
            cp.kv_unified = False
            cp.n_threads = cp.n_threads_batch = threads
            cp.no_perf = True
            self.ctx = L.llama_init_from_model(self.model, cp)
            if not self.ctx:
                raise RuntimeError(f"llama.cpp could not create a context for {path}")
            self.memory = L.llama_get_memory(self.ctx)
            self.n_ctx_seq = int(L.llama_n_ctx_seq(self.ctx))
            self.batch = L.llama_batch_init(N_BATCH, 0, 1)
            self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
            self.bos_text = self._special_text(L.llama_vocab_bos(self.vocab))
            self.eos_text = self._special_text(L.llama_vocab_eos(self.vocab))
            raw = L.llama_model_chat_template(self.model, None)
            template = chat_template or (raw.decode("utf-8", errors="replace") if raw else CHATML_TEMPLATE)
            eos = int(L.llama_vocab_eos(self.vocab))
            self.formatter = Jinja2ChatFormatter(
                template=template, eos_token=self.eos_text, bos_token=self.bos_text, stop_token_ids=[eos]
            )
            self._pieces: dict[int, bytes] = {}
            self._eog: dict[int, bool] = {}
            self._piece_buf = ctypes.create_string_buffer(256)
        except BaseException:
            self.close()
            raise

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return L.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied to the messages. A template that refuses them (its own
        `raise_exception`, e.g. for a role order it does not support) is the client's 400."""
        try:
            return self.formatter(messages=messages).prompt
        except (ValueError, TypeError, jinja2.TemplateError) as exc:
            raise InvalidRequest(
                f"the chat template of this model rejected the messages: {exc}", param="messages"
            ) from None

    def tokenize(self, text: str, bos: bool = True, special: bool = True) -> list[int]:
        """Tokens of `text`; `bos=False` for a piece that continues a prompt. `special=False` for
        text from the client: a control-token string in it stays text."""
        data = text.encode("utf-8")
        add_bos = bos and self.add_bos and not (special and self.bos_text and text.startswith(self.bos_text))
        cap = len(data) + 8
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token contributes to the text (special tokens contribute nothing)."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = self._piece_buf
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def logprob_entry(self, idx: int, token: int, top: int) -> dict[str, Any]:
        """OpenAI's logprobs entry for the token sampled from batch position `idx`."""
        logprob, alts = token_logprobs(self.ctx, idx, self.n_vocab, token, top)

        def describe(t: int, lp: float) -> dict[str, Any]:
            raw = self.piece(t)
            return {"token": raw.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(raw)}

        entry = describe(token, logprob)
        entry["top_logprobs"] = [describe(t, lp) for t, lp in alts]
        return entry

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(L.llama_vocab_is_eog(self.vocab, token))
        return eog

    def drop_kv(self, seq_id: int, keep: int) -> int:
        """Remove cells of `seq_id` from position `keep` on; returns how many positions remain."""
        if keep > 0 and L.llama_memory_seq_rm(self.memory, seq_id, keep, -1):
            return keep
        L.llama_memory_seq_rm(self.memory, seq_id, -1, -1)
        return 0

    def close(self) -> None:
        if self.batch is not None:
            L.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            L.llama_free(self.ctx)
            self.ctx = None
        if self.model is not None:
            self.model = None
            _release_weights(self.path)
