"""Model access keys (/v2/gen-ai/models/api_keys) in DigitalOcean's shapes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CreateKeyBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    name: str = Field(min_length=1, max_length=255)


class RenameKeyBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    api_key_uuid: str | None = None
    name: str = Field(min_length=1, max_length=255)


class APIKeyInfo(BaseModel):
    uuid: str
    name: str
    secret_key: str | None = None
    created_at: str | None = None
    created_by: str | None = None
    deleted_at: str | None = None


class APIKeyInfoResponse(BaseModel):
    api_key_info: APIKeyInfo


class PageLinks(BaseModel):
    first: str | None = None
    previous: str | None = None
    next: str | None = None
    last: str | None = None


class Links(BaseModel):
    pages: PageLinks


class Meta(BaseModel):
    page: int
    pages: int
    total: int


class APIKeyListResponse(BaseModel):
    api_key_infos: list[APIKeyInfo]
    links: Links
    meta: Meta
