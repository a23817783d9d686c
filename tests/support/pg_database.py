"""A PostgreSQL database of a test's own on the local server (127.0.0.1:5432, trust), dropped after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

PG_ADMIN = "postgresql://127.0.0.1:5432/test"


@pytest.fixture(name="pg_url")
def pg_url_fixture() -> Iterator[str]:
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (database 'test')")
    name = f"infergate_resp_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{admin.info.user}@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
