"""Model access keys in the database. Secrets are never stored: only their sha256."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, func, insert, select, update

from infergate.errors import InvalidRequest, NotFound
from infergate.storage.db import api_keys

SECRET_PREFIX = "sk-ig-"
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_name(name: str) -> str:
    """The API's schema checks names too; this covers the CLI (PostgreSQL cannot store NUL)."""
    if not name or len(name) > 255 or CONTROL_CHARACTERS.search(name):
        raise InvalidRequest(
            "name: must be 1 to 255 characters, without control characters (such as NUL, tab or newline)",
            param="name",
        )
    return name


def new_secret() -> str:
    """256 bits from the OS CSPRNG, URL-safe, behind a prefix that secret scanners can match."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    # A fast hash is right for 256-bit random secrets: nothing to brute-force, and it is on the hot path.
    return hashlib.sha256(secret.encode()).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    if ts.tzinfo is None:  # SQLite hands back naive values; we only ever write UTC
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class KeyRecord:
    uuid: str
    name: str
    secret_prefix: str
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    def info(self, secret: str | None = None) -> dict:
        """DigitalOcean's APIKeyInfo; `secret_key` only on create and regenerate."""
        return {
            "uuid": self.uuid,
            "name": self.name,
            "secret_key": secret,
            "created_at": iso(self.created_at),
            "created_by": self.created_by,
            "deleted_at": iso(self.deleted_at),
        }


def _utc(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every record carries aware UTC ones, whatever the database."""
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def _record(row) -> KeyRecord:  # type: ignore[no-untyped-def]
    return KeyRecord(
        row.uuid,
        row.name,
        row.secret_prefix,
        row.created_by,
        _utc(row.created_at),
        _utc(row.updated_at),
        _utc(row.deleted_at),
    )


class KeyRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self, name: str, created_by: str | None = None, secret: str | None = None
    ) -> tuple[KeyRecord, str]:
        # `secret`: the panel's playground key has one derived from the admin token (web/playground.py)
        secret, now = secret or new_secret(), utcnow()
        values = {
            "uuid": str(uuid.uuid4()),
            "name": check_name(name),
            "secret_hash": hash_secret(secret),
            "secret_prefix": secret[:10],
            "created_by": created_by,
            "created_at": now,
            "updated_at": now,
            "deleted_at": None,
        }
        with self.engine.begin() as conn:
            conn.execute(insert(api_keys).values(**values))
        return _record(type("Row", (), values)), secret

    def get(self, key_uuid: str) -> KeyRecord:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(api_keys).where(api_keys.c.uuid == key_uuid, api_keys.c.deleted_at.is_(None))
            ).first()
        if row is None:
            raise NotFound(f"model access key {key_uuid} not found", code="not_found")
        return _record(row)

    def list(self, page: int, per_page: int) -> tuple[list[KeyRecord], int]:
        live = api_keys.c.deleted_at.is_(None)
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(api_keys).where(live)).scalar_one()
            rows = conn.execute(
                select(api_keys)
                .where(live)
                .order_by(api_keys.c.created_at.desc(), api_keys.c.uuid)
                .limit(per_page)
                .offset((page - 1) * per_page)
            ).all()
        return [_record(r) for r in rows], int(total)

    def rename(self, key_uuid: str, name: str) -> KeyRecord:
        self._update(key_uuid, name=check_name(name), updated_at=utcnow())
        return self.get(key_uuid)

    def regenerate(self, key_uuid: str) -> tuple[KeyRecord, str]:
        secret = new_secret()
        self._update(
            key_uuid, secret_hash=hash_secret(secret), secret_prefix=secret[:10], updated_at=utcnow()
        )
        return self.get(key_uuid), secret

    def delete(self, key_uuid: str) -> KeyRecord:
        record = self.get(key_uuid)
        now = utcnow()
        # The hash is replaced too, so the old secret cannot match even by a bug in a filter.
        self._update(key_uuid, deleted_at=now, updated_at=now, secret_hash=f"deleted:{uuid.uuid4().hex}"[:64])
        return KeyRecord(
            record.uuid, record.name, record.secret_prefix, record.created_by, record.created_at, now, now
        )

    def find_by_hash(self, secret_hash: str) -> KeyRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(api_keys).where(api_keys.c.secret_hash == secret_hash, api_keys.c.deleted_at.is_(None))
            ).first()
        return _record(row) if row else None

    def _update(self, key_uuid: str, **values: object) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(api_keys)
                .where(api_keys.c.uuid == key_uuid, api_keys.c.deleted_at.is_(None))
                .values(**values)
            )
        if result.rowcount == 0:
            raise NotFound(f"model access key {key_uuid} not found", code="not_found")
