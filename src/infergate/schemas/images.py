"""Image request models: OpenAI's POST /v1/images/generations body, and fal's text-to-image
`input` of an async-invoke job.

Strict types, like chat: a string where a number belongs is a 400 naming the field. OpenAI fields
we accept but do not act on (`style`, `moderation`) are ignored; fal inputs are checked whole, so
a misspelt field fails at submit time instead of being silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from infergate.catalog import ModelSpec, parse_size
from infergate.errors import InvalidRequest
from infergate.http_errors import validation_message

MAX_PROMPT_CHARS = 32_000  # gpt-image-1's limit
MAX_SEED = 2**63 - 1
DOCUMENT_SIZES = ("256x256", "512x512", "1024x1024")  # the sizes the product document lists
OUTPUT_FORMATS = ("png", "jpeg", "webp")
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: int | None = Field(default=None, ge=1, le=10, description="number of images, 1 to 10")
    size: str | None = Field(
        default=None, max_length=20, description="256x256, 512x512, 1024x1024, or a size the model declares"
    )
    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] | None = None
    background: Literal["auto", "transparent", "opaque"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    response_format: Literal["b64_json", "url"] | None = None
    user: str | None = Field(default=None, max_length=256)
    stream: bool | None = None
    # beyond OpenAI, for local diffusion models (catalog defaults apply when absent)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    num_inference_steps: int | None = Field(default=None, ge=1, le=200)
    guidance_scale: float | None = Field(default=None, ge=0, le=50, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="image i uses seed + i")


def allowed_sizes(spec: ModelSpec) -> list[str]:
    return list(dict.fromkeys([*DOCUMENT_SIZES, *spec.sizes]))


def resolve_size(size: str | None, spec: ModelSpec) -> tuple[str, int, int]:
    """The size to make: the document's squares or one the catalog entry declares; None or
    "auto" is the model's default (`default_size`, else its first declared size, else 1024x1024)."""
    allowed = allowed_sizes(spec)
    if size is None or size == "auto":
        size = spec.default_size or (spec.sizes[0] if spec.sizes else "1024x1024")
    if size not in allowed and size != spec.default_size:
        raise InvalidRequest(
            f"size '{size}' is not supported by '{spec.id}'; allowed sizes: {', '.join(allowed)}",
            param="size",
            code="invalid_size",
        )
    width, height = parse_size(size)
    return size, width, height


# -- fal-style inputs (async-invoke) ---------------------------------------------------------------

# fal's image_size presets (width, height)
FAL_IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
FalPreset = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]


class FalImageSize(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    width: int = Field(ge=8, le=4096, multiple_of=8)
    height: int = Field(ge=8, le=4096, multiple_of=8)


class FalImageInput(BaseModel):
    """fal's text-to-image input (fast-sdxl, flux/schnell, ...)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    image_size: FalPreset | FalImageSize | None = None
    output_format: Literal["jpeg", "png", "webp"] = "jpeg"
    num_images: int = Field(default=1, ge=1, le=10)
    num_inference_steps: int | None = Field(default=None, ge=1, le=200)
    guidance_scale: float | None = Field(default=None, ge=0, le=50, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    enable_safety_checker: bool = True
    sync_mode: bool = False  # fal: answer with data: URIs instead of stored files

    @field_validator("image_size", mode="before")
    @classmethod
    def _preset_name(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in FAL_IMAGE_SIZES:
            raise ValueError(f"'{value}' is not a size preset; use one of {', '.join(FAL_IMAGE_SIZES)}")
        return value

    def dimensions(self, spec: ModelSpec) -> tuple[int, int]:
        """(width, height): the input's size, else the model's default size, else square_hd."""
        if isinstance(self.image_size, FalImageSize):
            return self.image_size.width, self.image_size.height
        if isinstance(self.image_size, str):
            return FAL_IMAGE_SIZES[self.image_size]
        if spec.default_size:
            return parse_size(spec.default_size)
        return FAL_IMAGE_SIZES["square_hd"]


def parse_fal_image_input(raw: Any, spec: ModelSpec | None = None) -> FalImageInput:
    """Validate an async-invoke `input` for an image model; InvalidRequest names `input.<field>`.

    With `spec`, the resolved (width, height) must be one the model allows, as for
    /v1/images/generations (a 4096x4096 job would otherwise exhaust memory); a fal upstream
    judges its own sizes.

    The product document's own example sends a size preset as `output_format`
    (`"output_format": "landscape_4_3"`): read that as `image_size`, as its author meant.
    """
    if not isinstance(raw, dict):
        raise InvalidRequest("input must be a JSON object", param="input")
    fmt = raw.get("output_format")
    if isinstance(fmt, str) and fmt in FAL_IMAGE_SIZES and "image_size" not in raw:
        raw = {**{k: v for k, v in raw.items() if k != "output_format"}, "image_size": fmt}
    try:
        params = FalImageInput.model_validate(raw)
    except ValidationError as exc:
        message, param = validation_message(exc)
        # the union's branch name is no part of the client's JSON path
        message, param = message.replace(".FalImageSize", ""), param and param.replace(".FalImageSize", "")
        raise InvalidRequest(f"input.{message}", param=f"input.{param}" if param else "input") from None
    if spec is not None and spec.backend != "fal":
        check_fal_size(params, spec)
    return params


def check_fal_size(params: FalImageInput, spec: ModelSpec) -> None:
    """The same allowed set as the sync endpoint: the document's squares, the catalog's `sizes`
    and its `default_size`."""
    width, height = params.dimensions(spec)
    allowed = allowed_sizes(spec)
    if spec.default_size and spec.default_size not in allowed:
        allowed.append(spec.default_size)
    if f"{width}x{height}" not in allowed:
        raise InvalidRequest(
            f"input.image_size {width}x{height} is not supported by '{spec.id}'; allowed sizes: "
            f"{', '.join(allowed)}",
            param="input.image_size",
            code="invalid_size",
        )
