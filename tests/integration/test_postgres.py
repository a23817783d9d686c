"""The whole server on PostgreSQL: keys, revocation and the ledger, as on SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import upstream_catalog
from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

ADMIN_DSN = "postgresql://127.0.0.1:5432/test"


def _admin_connect() -> psycopg.Connection:
    for user in ("postgres", "root", None):
        try:
            return psycopg.connect(
                ADMIN_DSN if user is None else f"postgresql://{user}@127.0.0.1:5432/test",
                autocommit=True,
                connect_timeout=3,
            )
        except psycopg.OperationalError:
            continue
    pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (database 'test')")


@pytest.fixture
def pg_url() -> Iterator[str]:
    conn = _admin_connect()
    name = f"infergate_it_{uuid.uuid4().hex[:10]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    user = conn.info.user
    try:
        yield f"postgresql://{user}@127.0.0.1:5432/{name}"
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def test_server_on_postgres(pg_url: str, upstream: StandInUpstream, tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "pg", upstream_catalog(upstream.base_url), env={"INFERGATE_DATABASE_URL": pg_url}
    ).start()
    try:
        info = server.create_key("pg")
        auth = {"Authorization": f"Bearer {info['secret_key']}"}
        body = {"model": "standin", "messages": [{"role": "user", "content": "hi"}]}
        usage = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=auth).json()["usage"]
        report = httpx.get(f"{server.url}/v2/gen-ai/usage", headers=server.admin()).json()
        assert report["totals"]["input_tokens"] == usage["prompt_tokens"]
        assert report["totals"]["output_tokens"] == usage["completion_tokens"]
        server.cli("keys", "regenerate", info["uuid"])
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=auth).status_code == 401
    finally:
        assert server.stop() == 0
    # a restart keeps keys and ledger: nothing lived only in memory
    server.start()
    try:
        listed = httpx.get(f"{server.url}/v2/gen-ai/models/api_keys", headers=server.admin()).json()
        assert [k["name"] for k in listed["api_key_infos"]] == ["pg"]
        assert (
            httpx.get(f"{server.url}/v2/gen-ai/usage", headers=server.admin()).json()["totals"]["requests"]
            == 1
        )
    finally:
        server.stop()
