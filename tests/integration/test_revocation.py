"""A revocation cannot be lost: two real servers on separate data dirs (separate hosts, as far as the
epoch file goes) share one PostgreSQL database and one Redis.

With Redis up, a key deleted on one server is rejected by the other within 100 ms (the bound the
project sets). With Redis down, the message is lost and the other server's key cache TTL ends it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.conftest import upstream_catalog
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

pytestmark = pytest.mark.postgres
PG_HOST = "127.0.0.1:5432"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
KEYS = "/v2/gen-ai/models/api_keys"


def _pg_admin() -> psycopg.Connection:
    for user in ("postgres", "root", None):
        dsn = f"postgresql://{user}@{PG_HOST}/test" if user else f"postgresql://{PG_HOST}/test"
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=3)
        except psycopg.OperationalError:
            continue
    pytest.skip(f"PostgreSQL is not reachable at {PG_HOST} (database 'test')")


def _pg_database() -> Iterator[str]:
    admin = _pg_admin()
    name = f"infergate_revoke_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{admin.info.user}@{PG_HOST}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from _pg_database()


@pytest.fixture
def own_pg_url() -> Iterator[str]:
    yield from _pg_database()


def wait_for_log(server: ServerProcess, text: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not in the server log:\n{server.log()}"
        time.sleep(0.02)


def start_pair(folder: Path, catalog: str, env: dict[str, str]) -> tuple[ServerProcess, ServerProcess]:
    a = ServerProcess(folder / "a", catalog, env=env).start()
    b = ServerProcess(folder / "b", catalog, env=env).start()
    for server in (a, b):  # subscribed: a message published from now on reaches it
        wait_for_log(server, "listening for key changes on Redis")
    return a, b


@pytest.fixture(scope="module")
def pair(
    pg_url: str, upstream: StandInUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    try:
        redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at 127.0.0.1:6379: {exc}")
    env = {"INFERGATE_DATABASE_URL": pg_url, "INFERGATE_REDIS_URL": LOCAL_REDIS}
    a, b = start_pair(tmp_path_factory.mktemp("revocation"), upstream_catalog(upstream.base_url), env)
    yield a, b
    a.stop()
    b.stop()


def test_delete_on_one_server_is_rejected_by_the_other_within_100ms(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pair
    for case in range(3):
        info = a.create_key(f"shared-{case}")
        auth = {"Authorization": f"Bearer {info['secret_key']}"}
        with httpx.Client(timeout=5) as http:
            for _ in range(3):  # b has the key in its cache
                assert http.get(f"{b.url}/v1/models", headers=auth).status_code == 200
            deleted = http.delete(f"{a.url}{KEYS}/{info['uuid']}", headers=a.admin())
            assert deleted.status_code == 200
            deleted_at = time.monotonic()
            while True:
                status = http.get(f"{b.url}/v1/models", headers=auth).status_code
                elapsed = time.monotonic() - deleted_at
                if status == 401:
                    break
                assert status == 200
                assert elapsed < 5, "the other server still accepts the deleted key"
        assert elapsed < 0.100, f"rejected after {elapsed * 1000:.1f} ms"


def test_regenerate_on_one_server_is_seen_by_the_other(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    info = a.create_key("regen")
    old = {"Authorization": f"Bearer {info['secret_key']}"}
    with httpx.Client(timeout=5) as http:
        assert http.get(f"{b.url}/v1/models", headers=old).status_code == 200
        new = http.put(f"{a.url}{KEYS}/{info['uuid']}/regenerate", headers=a.admin()).json()["api_key_info"]
        deadline = time.monotonic() + 5
        while http.get(f"{b.url}/v1/models", headers=old).status_code != 401:
            assert time.monotonic() < deadline
        fresh = {"Authorization": f"Bearer {new['secret_key']}"}
        assert http.get(f"{b.url}/v1/models", headers=fresh).status_code == 200


@pytest.mark.parametrize("name", ["nul\x00byte", "tab\tname", "new\nline", "esc\x1b[0m"])
def test_control_characters_in_a_key_name_are_400_on_postgres(
    pair: tuple[ServerProcess, ServerProcess], name: str
) -> None:
    a, _ = pair
    r = httpx.post(f"{a.url}{KEYS}", json={"name": name}, headers=a.admin())
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["id"] == "bad_request" and body["error"]["param"] == "name"
    assert "control characters" in body["message"]
    created = a.create_key("fine")
    r = httpx.put(f"{a.url}{KEYS}/{created['uuid']}", json={"name": name}, headers=a.admin())
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"


def test_with_redis_down_the_ttl_ends_a_deleted_key(
    own_pg_url: str, upstream: StandInUpstream, tmp_path: Path
) -> None:
    ttl = 1.0
    password = "redis-pw-must-not-be-logged"
    own_redis = RedisServer(tmp_path / "redis", password=password).start()
    env = {
        "INFERGATE_DATABASE_URL": own_pg_url,
        "INFERGATE_REDIS_URL": own_redis.url,
        "INFERGATE_KEY_CACHE_TTL": str(ttl),
    }
    a, b = start_pair(tmp_path, upstream_catalog(upstream.base_url), env)
    try:
        info = a.create_key("lost-message")
        auth = {"Authorization": f"Bearer {info['secret_key']}"}
        with httpx.Client(timeout=5) as http:
            assert http.get(f"{b.url}/v1/models", headers=auth).status_code == 200
            own_redis.stop()
            deleted = http.delete(f"{a.url}{KEYS}/{info['uuid']}", headers=a.admin())
            assert deleted.status_code == 200  # the publish failed; the delete did not
            deleted_at = time.monotonic()
            accepted_at: list[float] = []
            while True:
                sent = time.monotonic() - deleted_at
                status = http.get(f"{b.url}/v1/models", headers=auth).status_code
                if status == 401:
                    break
                assert status == 200
                accepted_at.append(sent)
                assert sent < 10 * ttl, "the deleted key outlived the TTL"
                time.sleep(0.01)
        # b last checked the key before the delete, so no request sent a TTL after it may pass
        assert accepted_at and max(accepted_at) < ttl
        wait_for_log(a, "key change not published to Redis")
        assert password not in a.log() and password not in b.log()
    finally:
        a.stop()
        b.stop()
        own_redis.stop()
