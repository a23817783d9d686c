"""Settings from the environment, read and validated once at start."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from infergate.catalog import Catalog


class SettingError(Exception):
    """An INFERGATE_* variable whose value cannot work; `infergate` prints it and exits 2."""


def int_env(name: str, default: int, *, minimum: int | None = None) -> int:
    """An integer setting; a value that is not one (or below `minimum`) names the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise SettingError(f"{name} must be at least {minimum}, got {value!r}")
    return number


def float_env(name: str, default: float, *, minimum: float | None = None) -> float:
    """A number setting (seconds, ...): finite, at least `minimum`."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise SettingError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise SettingError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise SettingError(f"{name} must be at least {minimum}, got {value!r}")
    return number


def bool_env(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise SettingError(f"{name} must be one of 1, 0, true, false, yes, no, on, off; got {value!r}")


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def shutdown_grace_seconds() -> int:
    """INFERGATE_SHUTDOWN_GRACE: seconds in-flight requests get on SIGTERM (uvicorn reads 0 as forever)."""
    return int_env("INFERGATE_SHUTDOWN_GRACE", 30, minimum=1)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    redis_url: str | None
    config_path: str | None
    admin_token: str | None
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    access_log: bool
    ledger_flush_ms: int
    shutdown_grace: int = 30
    key_cache_ttl: float = 5.0  # seconds a cached key is trusted before the database is asked again
    fast_routes: bool = True  # hot routes skip FastAPI's router (middleware.py); off only to measure it
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(os.environ.get("INFERGATE_DATA_DIR") or "./data").expanduser().resolve()
        make_private_dir(data_dir)
        db_url = os.environ.get("INFERGATE_DATABASE_URL") or f"sqlite:///{data_dir / 'infergate.db'}"
        origins = tuple(
            o.strip() for o in os.environ.get("INFERGATE_CORS_ORIGINS", "").split(",") if o.strip()
        )
        return cls(
            data_dir=data_dir,
            database_url=normalize_database_url(db_url),
            redis_url=os.environ.get("INFERGATE_REDIS_URL") or None,
            config_path=os.environ.get("INFERGATE_CONFIG") or None,
            admin_token=os.environ.get("INFERGATE_ADMIN_TOKEN") or None,
            cors_origins=origins,
            max_body_bytes=int_env("INFERGATE_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=1),
            access_log=bool_env("INFERGATE_ACCESS_LOG", True),
            ledger_flush_ms=int_env("INFERGATE_LEDGER_FLUSH_MS", 200, minimum=1),
            shutdown_grace=shutdown_grace_seconds(),
            key_cache_ttl=float_env("INFERGATE_KEY_CACHE_TTL", 5.0, minimum=0.0),
            fast_routes=bool_env("INFERGATE_FAST_ROUTES", True),
        )

    def load_catalog(self) -> Catalog:
        return Catalog.load(self.config_path, self.data_dir)


def make_private_dir(path: Path) -> None:
    """The data dir holds keys' hashes, the ledger and prompt caches: only its user may enter it
    (what is created inside follows the process umask, 077 under `infergate`)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except OSError:  # not ours to change (a mounted volume): leave it as the operator set it
        pass


def normalize_database_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (the driver we ship), not psycopg2."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url
