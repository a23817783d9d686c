"""KeyRepository and LedgerRepository on SQLite (a temp file) and on PostgreSQL (a fresh database per
test, created through the local server's `test` database and dropped after; skipped with the reason
when that server is not reachable)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, inspect, select, text, update

from infergate.config import normalize_database_url
from infergate.errors import NotFound
from infergate.storage.db import api_keys, metadata, open_database, usage_records
from infergate.storage.keys import SECRET_PREFIX, KeyRepository, hash_secret
from infergate.storage.ledger import DAY_MS, LedgerRepository

PG_HOST = "127.0.0.1:5432"
DAY0 = 1_764_028_800_000  # 2025-11-25T00:00:00Z, a day boundary
pg_skip_reason = ""


def pg_admin() -> psycopg.Connection | None:
    global pg_skip_reason
    errors = []
    for user in ("postgres", "root"):
        try:
            return psycopg.connect(f"postgresql://{user}@{PG_HOST}/test", autocommit=True, connect_timeout=3)
        except psycopg.OperationalError as exc:
            errors.append(f"{user}: {str(exc).strip().splitlines()[-1]}")
    pg_skip_reason = f"PostgreSQL not reachable at {PG_HOST} (database 'test'): {'; '.join(errors)}"
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        db = open_database(normalize_database_url(f"sqlite:///{tmp_path / 'infergate.db'}"))
        yield db
        db.dispose()
        return
    admin = pg_admin()
    if admin is None:
        pytest.skip(pg_skip_reason)
    name = f"infergate_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        db = open_database(normalize_database_url(f"postgresql://{admin.info.user}@{PG_HOST}/{name}"))
        try:
            yield db
        finally:
            db.dispose()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def keys(engine: Engine) -> KeyRepository:
    return KeyRepository(engine)


@pytest.fixture
def ledger(engine: Engine) -> LedgerRepository:
    return LedgerRepository(engine)


# --- migrations ----------------------------------------------------------------------------------


def test_migrations_create_the_schema_at_head(engine: Engine) -> None:
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    assert {"api_keys", "usage_records", "alembic_version"} <= tables
    assert {c["name"] for c in inspector.get_columns("usage_records")} == {
        c.name for c in usage_records.columns
    }
    assert {c["name"] for c in inspector.get_columns("api_keys")} == {c.name for c in api_keys.columns}
    assert {"ix_usage_created_ms", "ix_usage_key_created"} <= {
        i["name"] for i in inspector.get_indexes("usage_records")
    }
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == _alembic_head()


def test_every_table_the_code_uses_matches_its_migration(engine: Engine) -> None:
    import infergate.platform  # noqa: F401 - imports every module that defines a table

    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name


def _alembic_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import infergate.storage.db as db

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def test_opening_again_keeps_the_data(engine: Engine) -> None:
    record, secret = KeyRepository(engine).create("survivor")
    again = open_database(engine.url.render_as_string(hide_password=False))
    try:
        assert KeyRepository(again).find_by_hash(hash_secret(secret)).uuid == record.uuid
        with again.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    finally:
        again.dispose()


# --- keys ----------------------------------------------------------------------------------------


def test_create_stores_only_the_hash(engine: Engine, keys: KeyRepository) -> None:
    record, secret = keys.create("first", "admin")
    assert secret.startswith(SECRET_PREFIX) and len(secret) > 40
    assert record.name == "first" and record.created_by == "admin" and record.deleted_at is None
    assert record.secret_prefix == secret[:10]
    uuid.UUID(record.uuid)
    with engine.connect() as conn:
        row = conn.execute(select(api_keys)).one()
    assert row.secret_hash == hash_secret(secret) != secret
    assert secret not in [str(v) for v in row]
    info = keys.get(record.uuid).info()
    assert info["uuid"] == record.uuid and info["secret_key"] is None and info["deleted_at"] is None
    assert info["created_at"].endswith("Z")
    created = datetime.fromisoformat(info["created_at"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    assert record.info(secret)["secret_key"] == secret


def test_two_keys_have_different_secrets(keys: KeyRepository) -> None:
    (a, sa), (b, sb) = keys.create("a"), keys.create("b")
    assert a.uuid != b.uuid and sa != sb


def test_list_pages_newest_first_without_gaps_or_repeats(keys: KeyRepository) -> None:
    made = [keys.create(f"key-{i}")[0].uuid for i in range(5)]
    page1, total = keys.list(1, 2)
    page2, _ = keys.list(2, 2)
    page3, _ = keys.list(3, 2)
    page4, total4 = keys.list(4, 2)
    assert total == total4 == 5
    assert [len(page1), len(page2), len(page3), len(page4)] == [2, 2, 1, 0]
    listed = [r.uuid for r in page1 + page2 + page3]
    assert listed == made[::-1]
    everything, _ = keys.list(1, 1000)
    assert [r.uuid for r in everything] == listed


def test_list_and_total_leave_out_deleted_keys(keys: KeyRepository) -> None:
    kept = keys.create("kept")[0]
    gone = keys.create("gone")[0]
    keys.delete(gone.uuid)
    records, total = keys.list(1, 10)
    assert [r.uuid for r in records] == [kept.uuid] and total == 1


def test_rename(keys: KeyRepository) -> None:
    record, secret = keys.create("old name")
    renamed = keys.rename(record.uuid, "new name ✓")
    assert renamed.uuid == record.uuid and renamed.name == "new name ✓"
    assert keys.get(record.uuid).name == "new name ✓"
    assert renamed.updated_at >= record.updated_at
    assert keys.find_by_hash(hash_secret(secret)).name == "new name ✓"  # the secret still works


def test_regenerate_replaces_the_secret(keys: KeyRepository) -> None:
    record, old = keys.create("rotating")
    regenerated, new = keys.regenerate(record.uuid)
    assert regenerated.uuid == record.uuid and new != old and new.startswith(SECRET_PREFIX)
    assert regenerated.secret_prefix == new[:10]
    assert keys.find_by_hash(hash_secret(old)) is None
    assert keys.find_by_hash(hash_secret(new)).uuid == record.uuid


def test_delete(keys: KeyRepository) -> None:
    record, secret = keys.create("doomed")
    deleted = keys.delete(record.uuid)
    assert deleted.uuid == record.uuid and deleted.name == "doomed" and deleted.deleted_at is not None
    assert deleted.info()["deleted_at"].endswith("Z")
    assert keys.find_by_hash(hash_secret(secret)) is None
    with pytest.raises(NotFound):
        keys.get(record.uuid)
    for action in (
        lambda: keys.rename(record.uuid, "x"),
        lambda: keys.regenerate(record.uuid),
        lambda: keys.delete(record.uuid),
    ):
        with pytest.raises(NotFound):
            action()


def test_find_by_hash_ignores_deleted_keys_even_with_the_old_hash(
    engine: Engine, keys: KeyRepository
) -> None:
    """The filter itself, not only the hash replacement on delete, keeps a deleted key out."""
    record, secret = keys.create("soft-deleted")
    assert keys.find_by_hash(hash_secret(secret)).uuid == record.uuid
    with engine.begin() as conn:
        conn.execute(
            update(api_keys).where(api_keys.c.uuid == record.uuid).values(deleted_at=datetime.now(UTC))
        )
    assert keys.find_by_hash(hash_secret(secret)) is None


def test_records_carry_aware_utc_timestamps(keys: KeyRepository) -> None:
    """Records read back compare with records just made (SQLite returns naive datetimes)."""
    made = keys.create("tz")[0]
    for record in (
        made,
        keys.get(made.uuid),
        keys.list(1, 10)[0][0],
        keys.rename(made.uuid, "tz2"),
        keys.delete(made.uuid),
    ):
        for ts in (record.created_at, record.updated_at):
            assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0, record
    assert keys.create("later")[0].created_at >= made.created_at


def test_unknown_uuid_is_not_found(keys: KeyRepository) -> None:
    ghost = str(uuid.uuid4())
    for action in (
        lambda: keys.get(ghost),
        lambda: keys.rename(ghost, "x"),
        lambda: keys.regenerate(ghost),
        lambda: keys.delete(ghost),
    ):
        with pytest.raises(NotFound):
            action()
    assert keys.find_by_hash(hash_secret("sk-ig-nope")) is None


# --- ledger --------------------------------------------------------------------------------------


def row(
    request_id: str,
    *,
    key: str | None = "k1",
    model: str = "m1",
    at: int = DAY0 + 1000,
    inp: int = 10,
    out: int = 5,
    read: int = 0,
    w5: int = 0,
    w1: int = 0,
    cost: int = 100,
    status: int = 200,
    estimated: bool = False,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "key_uuid": key,
        "model": model,
        "endpoint": "chat.completions",
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_tokens": read,
        "cache_write_5m_tokens": w5,
        "cache_write_1h_tokens": w1,
        "cost_nano_usd": cost,
        "status": status,
        "latency_ms": 12.5,
        "estimated": estimated,
        "created_ms": at,
    }


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM usage_records")).scalar_one()


def everything(ledger: LedgerRepository, group_by: str) -> list[dict[str, Any]]:
    return ledger.report(0, 2**62, group_by)  # type: ignore[arg-type]


def test_insert_is_idempotent_per_request_id(engine: Engine, ledger: LedgerRepository) -> None:
    batch = [row("req_a"), row("req_b"), row("req_c")]
    ledger.insert(batch)
    ledger.insert(batch)  # a retried batch
    assert count(engine) == 3
    ledger.insert([row("req_c", inp=999), row("req_d")])  # half old, half new: only the new one lands
    assert count(engine) == 4
    [total] = everything(ledger, "model")
    assert total["requests"] == 4 and total["input_tokens"] == 40  # req_c counted once, as first written
    ledger.insert([])
    assert count(engine) == 4


def test_same_request_id_twice_in_one_batch_counts_once(engine: Engine, ledger: LedgerRepository) -> None:
    ledger.insert([row("req_dup"), row("req_dup")])
    assert count(engine) == 1


@pytest.fixture
def filled(keys: KeyRepository, ledger: LedgerRepository) -> dict[str, str]:
    alice = keys.create("alice")[0].uuid
    bob = keys.create("bob")[0].uuid
    keys.delete(bob)  # a deleted key's past usage still carries its name
    ledger.insert(
        [
            row("r1", key=alice, model="m1", at=DAY0 + 10, inp=100, out=10, cost=1_000),
            row("r2", key=alice, model="m2", at=DAY0 + DAY_MS + 5, inp=200, out=20, read=50, cost=2_000),
            row(
                "r3",
                key=bob,
                model="m1",
                at=DAY0 + DAY_MS + 6,
                inp=300,
                out=30,
                w5=7,
                w1=3,
                cost=3_000_000_000_000,
                status=502,
                estimated=True,
            ),
            row("r4", key=None, model="m2", at=DAY0 + 2 * DAY_MS - 1, inp=1, out=1, cost=1, status=429),
        ]
    )
    return {"alice": alice, "bob": bob}


SUMS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cost_nano_usd",
    "failed_requests",
    "estimated_requests",
)


def sums(r: dict[str, Any]) -> tuple[int, ...]:
    return tuple(r[name] for name in SUMS)


def test_report_by_model(filled: dict[str, str], ledger: LedgerRepository) -> None:
    rows = {r["group"]: sums(r) for r in everything(ledger, "model")}
    assert rows == {
        "m1": (2, 400, 40, 0, 7, 3, 3_000_000_001_000, 1, 1),
        "m2": (2, 201, 21, 50, 0, 0, 2_001, 1, 0),
    }


def test_report_by_key_names_keys(filled: dict[str, str], ledger: LedgerRepository) -> None:
    rows = {r["group"]: (r["key_name"], *sums(r)) for r in everything(ledger, "key")}
    assert rows == {
        filled["alice"]: ("alice", 2, 300, 30, 50, 0, 0, 3_000, 0, 0),
        filled["bob"]: ("bob", 1, 300, 30, 0, 7, 3, 3_000_000_000_000, 1, 1),
        None: (None, 1, 1, 1, 0, 0, 0, 1, 1, 0),
    }


def test_report_by_day(filled: dict[str, str], ledger: LedgerRepository) -> None:
    rows = everything(ledger, "day")
    assert [r["group"] for r in rows] == [DAY0, DAY0 + DAY_MS]  # day starts, in order
    assert [sums(r) for r in rows] == [
        (1, 100, 10, 0, 0, 0, 1_000, 0, 0),
        (3, 501, 51, 50, 7, 3, 3_000_000_002_001, 2, 1),
    ]
    assert all(isinstance(r["group"], int) and isinstance(r["cost_nano_usd"], int) for r in rows)


def test_report_range_is_start_inclusive_end_exclusive(
    filled: dict[str, str], ledger: LedgerRepository
) -> None:
    day2 = ledger.report(DAY0 + DAY_MS, DAY0 + 2 * DAY_MS, "model")
    assert sum(r["requests"] for r in day2) == 3
    just_before = ledger.report(DAY0 + DAY_MS, DAY0 + DAY_MS + 6, "model")
    assert [(r["group"], r["requests"]) for r in just_before] == [("m2", 1)]
    assert ledger.report(DAY0 + 3 * DAY_MS, DAY0 + 4 * DAY_MS, "key") == []
