"""Runs the ASGI app under uvicorn (uvloop + httptools; the default) or Granian.

bench/asgi_servers.sh measured both on the real app (one core, through the mock upstream):
uvicorn served 1.06-1.15x Granian's chat requests/s with a lower p50 and 40 MB less RSS;
Granian only won on the trivial /health route at c=64.

Both drain in-flight requests on SIGTERM/SIGINT before the app's lifespan shutdown flushes the
ledger. See bench/asgi_servers.sh for the measurement behind the default.
"""

from __future__ import annotations

from infergate.config import shutdown_grace_seconds

APP_FACTORY = "infergate.app:create_app"
SERVERS = ("uvicorn", "granian")


def run(host: str, port: int, server: str, workers: int, tls_cert: str | None, tls_key: str | None) -> None:
    if server == "granian":
        _granian(host, port, workers, tls_cert, tls_key)
    else:
        _uvicorn(host, port, workers, tls_cert, tls_key)


def _granian(host: str, port: int, workers: int, tls_cert: str | None, tls_key: str | None) -> None:
    from pathlib import Path

    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        APP_FACTORY,
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        log_access=False,
        backlog=2048,
        ssl_cert=Path(tls_cert) if tls_cert else None,
        ssl_key=Path(tls_key) if tls_key else None,
        workers_kill_timeout=shutdown_grace_seconds(),
    ).serve()


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _uvicorn(host: str, port: int, workers: int, tls_cert: str | None, tls_key: str | None) -> None:
    import signal

    import uvicorn

    # uvicorn drains, then re-raises the signal it caught under the handlers it found: exit 0
    # after a graceful stop instead of dying by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=shutdown_grace_seconds(),
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        backlog=2048,
        log_level="info",
    )
