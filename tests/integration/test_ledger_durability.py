"""Usage is never lost, on the real server: PostgreSQL cut off mid-load, then SIGTERM, restart;
`--workers 2` replaying a spill exactly once on a fresh SQLite data dir; private data-dir files."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest

from infergate.catalog import ModelSpec
from infergate.metering import Charge, MeteredEntry
from infergate.usage import Usage
from tests.conftest import upstream_catalog
from tests.integration.test_postgres import _admin_connect
from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

CHAT = {"model": "standin", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def spilled_row(i: int) -> bytes:
    standin = ModelSpec(
        id="standin", backend="openai", base_url="http://127.0.0.1:9/v1", input_price=1.0, output_price=2.0
    )
    entry = MeteredEntry(
        charge=Charge(standin, f"spilled-{i}", None, "chat.completions", started=0.0),
        usage=Usage(input_tokens=5, output_tokens=7),  # 5 x 1000 + 7 x 2000 = 19,000 nano-USD
        estimate=None,
        status=200,
        latency_ms=3.0,
        created_ms=int(time.time() * 1000),
    )
    return orjson.dumps(entry.row())


def poll(check, timeout: float = 60, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- --workers 2 on a fresh SQLite data dir -----------------------------------------------------


def test_two_workers_on_a_fresh_sqlite_dir_start_and_replay_the_spill_once(
    upstream: StandInUpstream, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    torn = spilled_row(99)[:25]
    (data / "ledger-spill.jsonl").write_bytes(
        b"\n".join([spilled_row(0), spilled_row(1), torn, spilled_row(2)]) + b"\n"
    )
    server = ServerProcess(data, upstream_catalog(upstream.base_url), args=["--workers", "2"])
    server.start()
    try:
        assert server.proc is not None
        # both workers live (neither died on the migration or on the spill) and answer
        assert (
            len(
                poll(
                    lambda: worker_pids(server.proc.pid) if len(worker_pids(server.proc.pid)) == 2 else None,
                    what="two workers",
                )
            )
            == 2
        )
        headers = {"Authorization": f"Bearer {server.create_key('w')['secret_key']}"}
        for _ in range(8):  # fresh connections, spread over the workers by the kernel
            r = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=headers)
            assert r.status_code == 200
        assert len(worker_pids(server.proc.pid)) == 2
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "Traceback" not in log, log
    with sqlite3.connect(data / "infergate.db") as conn:
        rows = conn.execute(
            "SELECT request_id FROM usage_records WHERE request_id LIKE 'spilled-%'"
        ).fetchall()
    assert sorted(r[0] for r in rows) == ["spilled-0", "spilled-1", "spilled-2"]
    # replayed exactly once: a second replay would have set the torn line aside a second time
    assert (data / "ledger-spill.rejected.jsonl").read_bytes() == torn + b"\n"
    assert not (data / "ledger-spill.jsonl").exists()
    assert not (data / "ledger-spill.replaying.jsonl").exists()


def worker_pids(parent: int) -> list[int]:
    """uvicorn's worker processes (its children, less multiprocessing's resource tracker)."""
    pids = []
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text()
            cmdline = (child / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"resource_tracker" not in cmdline:
            pids.append(int(child.name))
    return pids


def test_files_the_server_creates_in_the_data_dir_are_private(
    upstream: StandInUpstream, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    server = ServerProcess(data, upstream_catalog(upstream.base_url)).start()
    try:
        info = server.create_key("perm")
        headers = {"Authorization": f"Bearer {info['secret_key']}"}
        assert httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
        server.cli("keys", "rename", info["uuid"], "perm2")
    finally:
        assert server.stop() == 0
    ours = {data / "catalog.toml", data / "server.log"}  # written by the test, not by infergate
    created = [p for p in data.rglob("*") if p not in ours]
    names = {p.name for p in created}
    assert {"infergate.db", "keys.epoch"} <= names, names  # the database, the key revocation epoch
    assert data.stat().st_mode & 0o777 == 0o700
    for path in created:
        mode = path.stat().st_mode & 0o777
        if path.is_dir():
            assert mode == 0o700, f"{path.name}: {oct(mode)}"
        else:
            assert mode & 0o177 == 0, f"{path.name}: {oct(mode)}"  # at most 0600


# --- PostgreSQL cut off mid-load ------------------------------------------------------------------


class CuttableProxy:
    """A TCP proxy in front of the shared PostgreSQL: `cut()` drops every connection through it,
    without touching the server or its other users. New connections are then refused (accepted
    and closed at once) or, with `hang=True`, accepted and never answered, as a dead host behaves."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432), hang: bool = False) -> None:
        self.target = target
        self.hang = hang
        self.port = 0
        self.up = True
        self._loop = asyncio.new_event_loop()
        self._links: set[asyncio.StreamWriter] = set()
        self._started = threading.Event()

    def start(self) -> CuttableProxy:
        threading.Thread(target=self._serve, daemon=True).start()
        assert self._started.wait(10)
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            if self.hang:  # swallow what the client sends, answer nothing
                self._links.add(writer)
                while await reader.read(65536):
                    pass
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links -= {writer, up_writer}

    def cut(self) -> None:
        async def drop() -> None:
            self.up = False
            for link in list(self._links):
                link.transport.abort()

        asyncio.run_coroutine_threadsafe(drop(), self._loop).result(10)

    def restore(self) -> None:
        async def reopen() -> None:
            self.up = True
            for link in list(self._links):  # hung connections end: new ones go through
                link.transport.abort()

        asyncio.run_coroutine_threadsafe(reopen(), self._loop).result(10)

    def stop(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture
def pg_database() -> Iterator[tuple[str, str]]:
    """(user, database): a fresh database of our own on the shared server, dropped after."""
    admin = _admin_connect()
    name = f"infergate_durable_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.info.user, name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


async def _load(url: str, secret: str, answered: dict[str, int], stop: asyncio.Event) -> None:
    """Chat requests from 8 clients until `stop` or until the server stops taking them."""
    headers = {"Authorization": f"Bearer {secret}"}

    async def client() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            while not stop.is_set():
                try:
                    r = await http.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers)
                except httpx.HTTPError:
                    return  # the server is shutting down
                answered[r.headers["x-request-id"]] = r.status_code

    await asyncio.gather(*(client() for _ in range(8)))


@pytest.mark.postgres
@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_postgres_cut_off_mid_load_then_sigterm_loses_and_doubles_nothing(
    outage: str, pg_database: tuple[str, str], upstream: StandInUpstream, tmp_path: Path
) -> None:
    user, name = pg_database
    proxy = CuttableProxy(hang=outage == "hung").start()
    server = ServerProcess(
        tmp_path / "data",
        upstream_catalog(upstream.base_url),
        env={
            "INFERGATE_DATABASE_URL": f"postgresql://{user}@127.0.0.1:{proxy.port}/{name}",
            "INFERGATE_KEY_CACHE_TTL": "600",  # the key stays usable while its database is away
        },
    )
    answered: dict[str, int] = {}
    try:
        server.start()
        secret = server.create_key("durable")["secret_key"]

        async def scenario() -> int:
            stop = asyncio.Event()
            load = asyncio.create_task(_load(server.url, secret, answered, stop))
            await asyncio.to_thread(poll, lambda: len(answered) >= 50, 60, "load before the cut")
            proxy.cut()  # mid-load: writes in flight fail, later ones pile up
            cut_at = len(answered)
            await asyncio.to_thread(poll, lambda: len(answered) >= cut_at + 100, 60, "load while cut")
            code = await asyncio.to_thread(server.stop)  # SIGTERM while the load goes on
            stop.set()
            await load
            return code

        assert asyncio.run(scenario()) == 0
        spill = tmp_path / "data" / "ledger-spill.jsonl"
        assert spill.exists(), server.log()
        assert spill.stat().st_mode & 0o777 == 0o600
        proxy.restore()
        server.start()  # replays the spill
        assert not spill.exists()
        server.stop()
    finally:
        server.stop()
        proxy.stop()
    ok = {rid for rid, status in answered.items() if status == 200}
    assert len(ok) >= 150
    with psycopg.connect(f"postgresql://{user}@127.0.0.1:5432/{name}") as conn:
        rows = [r[0] for r in conn.execute("SELECT request_id FROM usage_records")]
    assert len(rows) == len(set(rows))  # nothing doubled
    assert ok <= set(rows), f"{len(ok - set(rows))} answered requests missing from the ledger"
    assert set(rows) <= set(answered), "rows of requests nobody sent"
    # every row is an answered request: refusals (if any) were never billed
    assert {answered[rid] for rid in rows} == {200}
