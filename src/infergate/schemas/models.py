"""Model listings: OpenAI's /v1/models and DigitalOcean's /v2/gen-ai/models."""

from __future__ import annotations

from pydantic import BaseModel

from infergate.schemas.keys import Links, Meta


class OpenAIModel(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: str = "list"
    data: list[OpenAIModel]


class DOModel(BaseModel):
    uuid: str
    id: str
    name: str
    created_at: str
    updated_at: str
    is_foundational: bool
    version: dict
    url: str | None = None
    parent_uuid: str | None = None
    upload_complete: bool
    agreement: dict | None = None


class DOModelList(BaseModel):
    """DigitalOcean's shape plus OpenAI's `data`, so both readings of the answer work."""

    models: list[DOModel]
    links: Links
    meta: Meta
    object: str = "list"
    data: list[OpenAIModel]
