"""Backend name -> engine class. A new backend is one module plus one line here."""

from __future__ import annotations

import importlib
from pathlib import Path

from infergate.catalog import ModelSpec
from infergate.engines.base import Engine

BACKENDS: dict[tuple[str, str], str] = {
    ("chat", "openai"): "infergate.engines.openai_upstream:OpenAIUpstreamEngine",
    ("chat", "llama_cpp"): "infergate.engines.llama.engine:LlamaCppEngine",
    ("tts", "piper"): "infergate.engines.piper_tts:PiperEngine",
    ("tts", "espeak"): "infergate.engines.espeak_tts:EspeakEngine",
    ("image", "diffusers"): "infergate.engines.diffusers_image:DiffusersImageEngine",
    ("image", "openai"): "infergate.engines.openai_images:OpenAIImagesEngine",
    # fal-compatible queue upstreams serve async-invoke jobs of any of these kinds
    **{(kind, "fal"): "infergate.engines.fal_upstream:FalQueueEngine" for kind in ("image", "tts", "audio")},
}


class BackendMissing(Exception):
    """This build has no engine for the spec's kind and backend (yet)."""


def build_engine(spec: ModelSpec, data_dir: Path | None = None) -> Engine:
    target = BACKENDS.get((spec.kind, spec.backend))
    if target is None:
        raise BackendMissing(f"no {spec.backend!r} engine for {spec.kind!r} models in this build")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendMissing(f"backend {spec.backend!r} cannot load: {exc}") from exc
    return getattr(module, class_name)(spec, data_dir=data_dir)
