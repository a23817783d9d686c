"""Model access keys (/v2/gen-ai/models/api_keys) in DigitalOcean's shapes."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc


def _no_control_characters(name: str) -> str:
    # PostgreSQL cannot store NUL at all; tabs, newlines and escapes in a name mislead logs and lists.
    if CONTROL_CHARACTERS.search(name):
        raise ValueError("must not contain control characters (such as NUL, tab or newline)")
    return name


KeyName = Annotated[
    str,
    Field(min_length=1, max_length=255, json_schema_extra={"pattern": r"^[^\u0000-\u001f\u007f-\u009f]*$"}),
    AfterValidator(_no_control_characters),
]


class CreateKeyBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    name: KeyName


class RenameKeyBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    api_key_uuid: str | None = None
    name: KeyName


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
