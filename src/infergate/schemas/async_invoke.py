"""async-invoke request models and the job object the document shows.

The job object has exactly the document's fields: `request_id`, `model_id`, `status`,
`created_at`, `started_at`, `completed_at`, `error`, `output`; timestamps in RFC 3339 UTC with
microseconds (`2026-01-22T19:19:19.112403Z`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infergate.errors import InvalidRequest
from infergate.http_errors import validation_message
from infergate.jobs.queue import Job

MAX_TAGS = 20
MAX_SPEECH_CHARS = 20_000  # a long text is split by the engines; this bounds one job's work


class Tag(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    key: str = Field(min_length=1, max_length=64)
    value: str = Field(max_length=256)


class AsyncInvokeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    model_id: str = Field(
        min_length=1, max_length=200, description="e.g. fal-ai/fast-sdxl or piper-en-us-joe"
    )
    input: dict[str, Any] = Field(description="the model's fal-style input")
    tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS)
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="called with the job object when it ends (allowed by INFERGATE_WEBHOOK_ALLOWED_URLS)",
    )


class SpeechInput(BaseModel):
    """fal's text-to-speech input; `output_format` beyond fal (engines/audio_format.py's formats)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_SPEECH_CHARS)
    voice: str | None = Field(default=None, min_length=1, max_length=100)
    speed: float = Field(default=1.0, ge=0.25, le=4.0, allow_inf_nan=False)
    output_format: Literal["wav", "pcm", "mp3", "flac", "ogg", "opus"] = "wav"


def parse_input(model: type[BaseModel], raw: Any) -> Any:
    """Validate a job's `input`; InvalidRequest names `input.<field>`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise InvalidRequest(f"input.{message}", param=f"input.{param}" if param else "input") from None


def iso(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def job_object(job: Job) -> dict[str, Any]:
    """The document's job object, exactly its fields."""
    return {
        "request_id": job.id,
        "model_id": job.model_id,
        "status": job.status,
        "created_at": iso(job.created_us),
        "started_at": iso(job.started_us) if job.status != "QUEUED" else None,
        "completed_at": iso(job.completed_us),
        "error": job.error if job.status in ("FAILED", "CANCELLED") else None,
        "output": job.output,
    }


class JobObject(BaseModel):
    """The document's async-invoke job (OpenAPI documentation of the answers)."""

    request_id: str
    model_id: str | None
    status: Literal["QUEUED", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"]
    created_at: str
    started_at: str | None
    completed_at: str | None
    error: str | None
    output: Any


class JobListItem(JobObject):
    tags: list[Tag]


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobListItem]
    first_id: str | None
    last_id: str | None
    has_more: bool


class WebhookDelivery(BaseModel):
    attempt: int
    at: str
    status_code: int | None
    error: str | None
    duration_ms: float


class WebhookLog(BaseModel):
    url: str
    status: Literal["pending", "delivered", "failed"]
    deliveries: list[WebhookDelivery]
