"""Generated files (images, audio): stored under the data dir or in an S3-compatible bucket, served
by infergate at unguessable, HMAC-signed URLs that expire (api/media.py).

A file is stored with its metadata (owner key, content type, file name, expiry, seed...): a JSON
sidecar next to it on disk, object metadata in S3. No database table: the URL is the capability,
and the owner is recorded for cleanup and audit. Files past the retention are deleted by a
background sweep (and refused at once, even before the sweep gets to them).

    ref = await media.save(data, content_type="image/png", key_uuid=key.uuid, file_name="a.png")
    url = media.signed_url(ref, "http://host:8000")   # .../media/<id>/a.png?expires=...&sig=...
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlsplit

from infergate.config import SettingError, float_env
from infergate.errors import NotFound, PermissionDenied, Unavailable

log = logging.getLogger("infergate.media")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "audio/wav": "wav"}
SECRET_FILE = "media-secret"


@dataclass(frozen=True)
class MediaSettings:
    retention: float  # seconds a file is kept (0: forever)
    url_ttl: float  # seconds a signed URL is valid (never past the file's retention)
    secret: str | None  # HMAC key; None: generated once into the data dir
    public_url: str | None  # base of URLs signed without a request (standalone workers)
    s3_bucket: str | None
    s3_endpoint: str | None
    s3_region: str | None
    s3_prefix: str

    @classmethod
    def from_env(cls) -> MediaSettings:
        secret = os.environ.get("INFERGATE_MEDIA_SECRET") or None
        if secret is not None and len(secret) < 16:
            raise SettingError("INFERGATE_MEDIA_SECRET must be at least 16 characters")
        public = (os.environ.get("INFERGATE_PUBLIC_URL") or "").rstrip("/") or None
        if public and not re.match(r"^https?://", public):
            raise SettingError(f"INFERGATE_PUBLIC_URL must start with http:// or https://, got {public!r}")
        return cls(
            retention=float_env("INFERGATE_MEDIA_RETENTION", 7 * 86_400, minimum=0),
            url_ttl=float_env("INFERGATE_MEDIA_URL_TTL", 86_400, minimum=1),
            secret=secret,
            public_url=public,
            s3_bucket=os.environ.get("INFERGATE_MEDIA_S3_BUCKET") or None,
            s3_endpoint=os.environ.get("INFERGATE_MEDIA_S3_ENDPOINT") or None,
            s3_region=os.environ.get("INFERGATE_MEDIA_S3_REGION") or None,
            s3_prefix=os.environ.get("INFERGATE_MEDIA_S3_PREFIX", "media/"),
        )


@dataclass(frozen=True)
class MediaRef:
    """A stored file. `id` is random (unguessable); `key_uuid` the key whose request made it."""

    id: str
    file_name: str
    content_type: str
    size: int
    key_uuid: str | None
    created: float
    expires_at: float | None  # None: kept until deleted
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"/media/{self.id}/{quote(self.file_name)}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> MediaRef:
        return cls(**json.loads(raw))


class MediaBackend(Protocol):
    def put(self, ref: MediaRef, data: bytes) -> None: ...
    def get(self, media_id: str) -> tuple[MediaRef, bytes] | None: ...
    def head(self, media_id: str) -> MediaRef | None: ...
    def local_path(self, media_id: str) -> Path | None: ...
    def sweep(self, now: float) -> int: ...


class LocalMedia:
    """Files under `<data dir>/media/<id[:2]>/<id>` with a `<id>.json` sidecar (written last, so a
    file without its sidecar is an unfinished write and is never served)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _paths(self, media_id: str) -> tuple[Path, Path]:
        folder = self.root / media_id[:2]
        return folder / media_id, folder / f"{media_id}.json"

    def put(self, ref: MediaRef, data: bytes) -> None:
        blob, sidecar = self._paths(ref.id)
        blob.parent.mkdir(parents=True, exist_ok=True)
        for path, content in ((blob, data), (sidecar, ref.to_json())):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(content)
            os.replace(tmp, path)

    def head(self, media_id: str) -> MediaRef | None:
        _, sidecar = self._paths(media_id)
        try:
            return MediaRef.from_json(sidecar.read_bytes())
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def get(self, media_id: str) -> tuple[MediaRef, bytes] | None:
        ref = self.head(media_id)
        if ref is None:
            return None
        try:
            return ref, self._paths(media_id)[0].read_bytes()
        except FileNotFoundError:
            return None

    def local_path(self, media_id: str) -> Path | None:
        return self._paths(media_id)[0]

    def sweep(self, now: float) -> int:
        removed = 0
        for sidecar in self.root.glob("*/*.json"):
            ref = self.head(sidecar.stem)
            if ref is not None and (ref.expires_at is None or ref.expires_at > now):
                continue
            if ref is None and sidecar.stat().st_mtime > now - 3600:
                continue  # unreadable but fresh: maybe mid-write elsewhere
            for path in (sidecar.with_suffix(""), sidecar):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed += 1
        return removed


class S3Media:
    """Objects `<prefix><id>` in a bucket (any S3-compatible server), the metadata in the object's
    user metadata. Served through infergate like local files, so the bucket can stay private."""

    def __init__(self, settings: MediaSettings) -> None:
        try:
            import boto3
        except ImportError:
            raise SettingError(
                "INFERGATE_MEDIA_S3_BUCKET is set but boto3 is not installed (pip install 'infergate[s3]')"
            ) from None
        self.bucket = settings.s3_bucket
        self.retention = settings.retention
        self.prefix = settings.s3_prefix
        # credentials: the usual AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / profile chain
        self.client = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region)

    def put(self, ref: MediaRef, data: bytes) -> None:
        meta = base64.urlsafe_b64encode(ref.to_json()).decode()  # S3 metadata is ASCII only
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.prefix + ref.id,
            Body=data,
            ContentType=ref.content_type,
            Metadata={"infergate-ref": meta},
        )

    def _ref(self, metadata: dict[str, str]) -> MediaRef | None:
        raw = metadata.get("infergate-ref")
        return MediaRef.from_json(base64.urlsafe_b64decode(raw)) if raw else None

    def head(self, media_id: str) -> MediaRef | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self.prefix + media_id)
        except self.client.exceptions.ClientError as exc:
            if _s3_missing(exc):
                return None
            raise
        return self._ref(answer.get("Metadata", {}))

    def get(self, media_id: str) -> tuple[MediaRef, bytes] | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + media_id)
        except self.client.exceptions.ClientError as exc:
            if _s3_missing(exc):
                return None
            raise
        ref = self._ref(answer.get("Metadata", {}))
        return None if ref is None else (ref, answer["Body"].read())

    def local_path(self, media_id: str) -> Path | None:
        return None

    def sweep(self, now: float) -> int:
        """Objects whose expiry passed, by their metadata. Only objects written more than the
        retention ago can have expired (expiry = creation + retention), so only those are asked
        for their metadata: one HEAD each for candidates, none for fresh files."""
        removed = 0
        oldest_fresh = now - self.retention if self.retention else now
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            doomed = []
            for obj in page.get("Contents", []):
                if obj["LastModified"].timestamp() > oldest_fresh:
                    continue
                media_id = obj["Key"][len(self.prefix) :]
                ref = self.head(media_id) if ID_PATTERN.match(media_id) else None
                if ref is not None and ref.expires_at is not None and ref.expires_at <= now:
                    doomed.append({"Key": obj["Key"]})
            if doomed:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": doomed, "Quiet": True})
                removed += len(doomed)
        return removed


def _s3_missing(exc: Any) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def load_secret(settings: MediaSettings, data_dir: Path) -> bytes:
    """The HMAC key: the setting, else a random one made once into `<data dir>/media-secret` (0600).
    Replicas on several hosts must share it: set INFERGATE_MEDIA_SECRET there."""
    if settings.secret:
        return settings.secret.encode()
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            value = path.read_bytes().strip()
            if value:
                return value
            time.sleep(0.01)
        raise RuntimeError(f"{path} is empty") from None
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_urlsafe(32).encode())
    return path.read_bytes().strip()


def safe_file_name(name: str | None, media_id: str, content_type: str) -> str:
    cleaned = NAME_UNSAFE.sub("_", name or "").strip("._")[:100]
    return cleaned or f"{media_id}.{EXTENSIONS.get(content_type, 'bin')}"


class MediaStore:
    def __init__(self, settings: MediaSettings, data_dir: Path) -> None:
        self.settings = settings
        self.backend: MediaBackend = (
            S3Media(settings) if settings.s3_bucket else LocalMedia(data_dir / "media")
        )
        self._secret = load_secret(settings, data_dir)
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls, data_dir: Path) -> MediaStore:
        return cls(MediaSettings.from_env(), data_dir)

    # -- storing and reading ----------------------------------------------------------------------
    async def save(
        self,
        data: bytes,
        *,
        content_type: str,
        key_uuid: str | None,
        file_name: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> MediaRef:
        media_id = secrets.token_urlsafe(24)
        now = time.time()
        ref = MediaRef(
            id=media_id,
            file_name=safe_file_name(file_name, media_id, content_type),
            content_type=content_type,
            size=len(data),
            key_uuid=key_uuid,
            created=now,
            expires_at=now + self.settings.retention if self.settings.retention else None,
            meta=meta or {},
        )
        try:
            await asyncio.to_thread(self.backend.put, ref, data)
        except Exception as exc:  # a full disk, an unreachable bucket: the request cannot finish
            log.error("media store: saving %s failed: %s", ref.file_name, exc)
            raise Unavailable(f"The media store cannot save files right now: {exc}") from None
        return ref

    async def load(self, media_id: str) -> tuple[MediaRef, bytes]:
        """The file and its metadata; NotFound when absent or past its retention."""
        found = await asyncio.to_thread(self.backend.get, media_id) if ID_PATTERN.match(media_id) else None
        if found is None or _expired(found[0]):
            raise NotFound(
                "This media file does not exist (or is past its retention).", code="media_not_found"
            )
        return found

    async def head(self, media_id: str) -> MediaRef:
        ref = await asyncio.to_thread(self.backend.head, media_id) if ID_PATTERN.match(media_id) else None
        if ref is None or _expired(ref):
            raise NotFound(
                "This media file does not exist (or is past its retention).", code="media_not_found"
            )
        return ref

    # -- signed URLs --------------------------------------------------------------------------------
    def _signature(self, media_id: str, file_name: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{media_id}/{file_name}\n{expires}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def signed_url(self, ref: MediaRef, base_url: str | None = None, ttl: float | None = None) -> str:
        """`{base}/media/<id>/<name>?expires=<unix>&sig=<hmac>`, valid for `ttl` seconds (default
        INFERGATE_MEDIA_URL_TTL) and never past the file's retention. The base is
        INFERGATE_PUBLIC_URL when set (behind a proxy the request's own address is not the one
        clients reach), else `base_url`, else none (a path relative to the server)."""
        expires = int(time.time() + (ttl or self.settings.url_ttl))
        if ref.expires_at is not None:
            expires = min(expires, int(ref.expires_at))
        base = (self.settings.public_url or base_url or "").rstrip("/")
        sig = self._signature(ref.id, ref.file_name, expires)
        return f"{base}{ref.path}?expires={expires}&sig={sig}"

    def verify(self, media_id: str, file_name: str, expires: str | None, sig: str | None) -> None:
        """Refuse (403) a URL whose signature does not match or whose expiry has passed."""
        if not expires or not sig or not expires.isdigit():
            raise PermissionDenied("This media URL is not signed.", code="invalid_signature")
        expected = self._signature(media_id, file_name, int(expires))
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            raise PermissionDenied("This media URL's signature is invalid.", code="invalid_signature")
        if int(expires) < time.time():
            raise PermissionDenied("This media URL has expired.", code="url_expired")

    def refresh_urls(self, value: Any, base_url: str | None = None) -> Any:
        """A copy of a JSON value (a job's output) whose URLs of our media are signed afresh, with
        `base_url` (e.g. a stored relative path made absolute for the client reading it now)."""
        if isinstance(value, dict):
            return {
                k: self._refresh(v, base_url) if k == "url" else self.refresh_urls(v, base_url)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.refresh_urls(v, base_url) for v in value]
        return value

    def _refresh(self, url: Any, base_url: str | None) -> Any:
        if not isinstance(url, str):
            return url
        parts = urlsplit(url)
        match = re.match(r"^/media/([A-Za-z0-9_-]+)/([^/]+)$", parts.path)
        query = parse_qs(parts.query)
        if match is None or "sig" not in query:
            return url
        media_id, file_name = match.groups()
        try:
            self.verify(media_id, file_name, query.get("expires", [""])[0], query["sig"][0])
        except PermissionDenied as exc:
            if exc.code != "url_expired":
                return url  # not one we signed: leave it alone
        head = MediaRef(media_id, file_name, "", 0, None, 0.0, None)
        return self.signed_url(head, base_url)

    # -- retention ------------------------------------------------------------------------------
    async def sweep(self) -> int:
        return await asyncio.to_thread(self.backend.sweep, time.time())

    async def start(self) -> None:
        if self.settings.retention:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        interval = min(max(self.settings.retention / 10, 1.0), 3600.0)
        while True:
            try:
                removed = await self.sweep()
                if removed:
                    log.info("media retention: removed %d expired file(s)", removed)
            except Exception as exc:  # a storage hiccup must not end the sweeping
                log.warning("media retention sweep failed: %s", exc)
            await asyncio.sleep(interval)


def _expired(ref: MediaRef) -> bool:
    return ref.expires_at is not None and ref.expires_at <= time.time()
