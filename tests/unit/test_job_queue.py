"""The job queue on real SQLite and real PostgreSQL: claims, leases, retries, cancel, visibility."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, delete, select, text

from infergate.errors import Conflict
from infergate.jobs.queue import (
    CANCELLED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    QUEUED,
    JobQueue,
    QueueSettings,
)
from infergate.jobs.tables import job_deliveries, job_tags, jobs
from infergate.storage.db import open_database

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_DB = "infergate_jobs_unit"


def postgres_url() -> str:
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": PG_DB}).first():
                conn.execute(text(f'CREATE DATABASE "{PG_DB}"'))
        admin.dispose()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_DB}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('jobs') / 'jobs.db'}"
    else:
        url = postgres_url()
    db = open_database(url)
    yield db
    db.dispose()


@pytest.fixture
def queue(engine: Engine) -> JobQueue:
    with engine.begin() as conn:
        for table in (jobs, job_tags, job_deliveries):
            conn.execute(delete(table))
    return JobQueue(engine, QueueSettings(lease_seconds=30, max_attempts=3))


def short_lease(queue: JobQueue, seconds: float = 0.3, max_attempts: int = 3) -> JobQueue:
    return JobQueue(queue.engine, QueueSettings(lease_seconds=seconds, max_attempts=max_attempts))


def poll(fn, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_lifecycle(queue: JobQueue) -> None:
    job = queue.submit_now("t", {"x": 1}, "key-a", tags=[{"key": "type", "value": "test"}], model_id="m/1")
    assert job.status == QUEUED and job.attempts == 0 and job.tags == [{"key": "type", "value": "test"}]
    [claimed] = queue.claim(["t"], 10)
    assert claimed.id == job.id and claimed.status == IN_PROGRESS and claimed.attempts == 1
    assert claimed.lease_token and claimed.started_us is not None
    assert queue.claim(["t"], 10) == []  # leased: nobody else gets it
    assert queue.complete(claimed, {"ok": True})
    done = queue.get_now(job.id, "key-a")
    assert done is not None and done.status == COMPLETED and done.output == {"ok": True}
    assert done.completed_us is not None and done.completed_us >= done.started_us  # type: ignore[operator]
    assert not queue.complete(claimed, {"again": True})  # the lease ended with the job


def test_claims_only_registered_kinds(queue: JobQueue) -> None:
    queue.submit_now("other", {}, None)
    assert queue.claim(["t"], 10) == []
    assert len(queue.claim(["other"], 10)) == 1


def test_concurrent_claimers_never_share_a_job(queue: JobQueue) -> None:
    total = 300
    queue.submit_many("t", ({"i": i} for i in range(total)))
    seen: list[str] = []
    lock = threading.Lock()

    def drain() -> None:
        while True:
            batch = queue.claim(["t"], 7)
            if not batch:
                return
            for job in batch:
                assert queue.complete(job, {"i": job.payload["i"]})
            with lock:
                seen.extend(j.id for j in batch)

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == total and len(set(seen)) == total
    with queue.engine.connect() as conn:
        statuses = conn.execute(select(jobs.c.status, jobs.c.attempts)).all()
    assert {(s, a) for s, a in statuses} == {(COMPLETED, 1)}


def test_expired_lease_is_claimed_again_and_the_old_worker_is_locked_out(queue: JobQueue) -> None:
    q = short_lease(queue)
    job = q.submit_now("t", {}, None)
    [first] = q.claim(["t"], 1)
    retaken = poll(lambda: q.claim(["t"], 1))
    assert (
        retaken[0].id == job.id and retaken[0].attempts == 2 and retaken[0].lease_token != first.lease_token
    )
    assert not q.complete(first, {"stale": True})  # the first worker lost its lease
    assert q.heartbeat([(first.id, first.lease_token or "")]) == {first.id}
    assert q.heartbeat([(retaken[0].id, retaken[0].lease_token or "")]) == set()
    assert q.complete(retaken[0], {"fresh": True})
    assert q.get_now(job.id, admin=True).output == {"fresh": True}  # type: ignore[union-attr]


def test_heartbeat_keeps_the_lease(queue: JobQueue) -> None:
    q = short_lease(queue, seconds=0.5)
    q.submit_now("t", {}, None)
    [job] = q.claim(["t"], 1)
    deadline = time.monotonic() + 1.5  # three lease lengths, renewed well within each
    while time.monotonic() < deadline:
        assert q.heartbeat([(job.id, job.lease_token or "")]) == set()
        assert q.claim(["t"], 1) == []
        time.sleep(0.1)
    assert q.complete(job, {})


def test_bounded_retries_then_failed_with_the_reason(queue: JobQueue) -> None:
    q = short_lease(queue, seconds=0.2, max_attempts=2)
    job = q.submit_now("t", {}, None)
    assert q.claim(["t"], 1)[0].attempts == 1
    assert poll(lambda: q.claim(["t"], 1))[0].attempts == 2

    def failed() -> bool:
        assert q.claim(["t"], 1) == []  # the third claim fails the job instead of handing it out
        found = q.get_now(job.id, admin=True)
        return found is not None and found.status == FAILED

    poll(failed)
    final = q.get_now(job.id, admin=True)
    assert final is not None and "abandoned 2 time(s)" in (final.error or "")
    assert q.next_due_us(["t"]) is None  # nothing left to claim


def test_retry_later_and_release(queue: JobQueue) -> None:
    job = queue.submit_now("t", {}, None)
    [claimed] = queue.claim(["t"], 1)
    assert queue.retry(claimed, 0.3, "upstream busy")
    again = queue.get_now(job.id, admin=True)
    assert again is not None and again.status == QUEUED and again.error == "upstream busy"
    assert queue.claim(["t"], 1) == []  # not before its delay
    [second] = poll(lambda: queue.claim(["t"], 1))
    assert second.attempts == 2
    assert queue.release(second)  # handed back at shutdown: this attempt is not counted
    [third] = queue.claim(["t"], 1)
    assert third.attempts == 2
    assert queue.retry(third, 0, "again")
    [fourth] = queue.claim(["t"], 1)
    assert fourth.attempts == 3
    assert queue.retry(fourth, 0, "last straw")  # no attempt left: FAILED with the reason
    final = queue.get_now(job.id, admin=True)
    assert final is not None and final.status == FAILED and final.error == "last straw"


def test_cancel(queue: JobQueue) -> None:
    import asyncio

    queued = queue.submit_now("t", {}, "key-a")
    running = queue.submit_now("t", {}, "key-a")
    assert asyncio.run(queue.cancel(queued.id, "key-b")) is None  # another key: not found
    cancelled = asyncio.run(queue.cancel(queued.id, "key-a"))
    assert cancelled is not None and cancelled.status == CANCELLED and cancelled.completed_us
    with pytest.raises(Conflict):
        asyncio.run(queue.cancel(queued.id, "key-a"))
    [claimed] = queue.claim(["t"], 5)
    assert claimed.id == running.id
    told: list[str] = []
    queue.on_cancel.append(told.append)
    assert asyncio.run(queue.cancel(running.id, admin=True)) is not None
    assert told == [running.id]
    assert queue.lost_leases([(claimed.id, claimed.lease_token or "")]) == {claimed.id}
    assert not queue.complete(claimed, {"late": True})
    assert queue.get_now(running.id, admin=True).status == CANCELLED  # type: ignore[union-attr]


def test_visibility_and_duplicate_ids(queue: JobQueue) -> None:
    job = queue.submit_now("t", {}, "key-a", job_id="resp_123")
    assert queue.get_now(job.id, "key-a") is not None
    assert queue.get_now(job.id, "key-b") is None
    assert queue.get_now(job.id, None) is not None  # internal callers (no key) see every job
    assert queue.get_now(job.id, admin=True) is not None
    with pytest.raises(Conflict):
        queue.submit_now("t", {}, "key-a", job_id="resp_123")


def test_list_filters_and_pages(queue: JobQueue) -> None:
    import asyncio

    ids = []
    for i in range(5):
        tags = [{"key": "type", "value": "even" if i % 2 == 0 else "odd"}, {"key": "n", "value": str(i)}]
        ids.append(queue.submit_now("t", {}, "key-a", tags=tags, model_id=f"m{i % 2}").id)
    queue.submit_now("t", {}, "key-b", tags=[{"key": "type", "value": "even"}])
    queue.submit_now("other", {}, "key-a")
    [first] = queue.claim(["t"], 1)
    queue.complete(first, {})

    def listed(**kw):  # type: ignore[no-untyped-def]
        found, more = asyncio.run(queue.list("t", kw.pop("key", "key-a"), **kw))
        return [j.id for j in found], more

    assert listed()[0] == ids[::-1]
    assert listed(tags=[("type", "even")])[0] == [ids[4], ids[2], ids[0]]
    assert listed(tags=[("type", "even"), ("n", "2")])[0] == [ids[2]]
    assert listed(statuses=[COMPLETED])[0] == [first.id]
    assert listed(model_id="m1")[0] == [ids[3], ids[1]]
    page, more = listed(limit=2)
    assert page == [ids[4], ids[3]] and more
    page, more = listed(limit=2, after=ids[3])
    assert page == [ids[2], ids[1]] and more
    page, more = listed(limit=2, after=ids[1])
    assert page == [ids[0]] and not more
    assert len(listed(key=None, admin=True)[0]) == 6


def test_finished_job_with_webhook_queues_its_delivery_atomically(queue: JobQueue) -> None:
    job = queue.submit_now("t", {}, "key-a", webhook_url="http://127.0.0.1:9/hook")
    assert job.webhook_status == "pending"
    [claimed] = queue.claim(["t"], 1)
    assert queue.claim(["webhook"], 1) == []  # nothing to deliver before the job ends
    queue.fail(claimed, "boom")
    [delivery] = queue.claim(["webhook"], 1)
    assert delivery.payload == {"job_id": job.id} and delivery.key_uuid == "key-a"
    queue.record_delivery(job.id, 1, 500, None, 12.5, None)
    queue.record_delivery(job.id, 2, 204, None, 3.0, "delivered")
    assert [d["status_code"] for d in queue.deliveries(job.id)] == [500, 204]
    assert queue.get_now(job.id, admin=True).webhook_status == "delivered"  # type: ignore[union-attr]


def test_sqlite_file_shared_by_two_engines(tmp_path: Path) -> None:
    """Two processes' engines on one SQLite file (stand-in: two engines) never double-claim."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = JobQueue(open_database(url)), JobQueue(open_database(url))
    a.submit_many("t", ({"i": i} for i in range(100)))
    got: list[str] = []
    while True:
        batch = a.claim(["t"], 3) + b.claim(["t"], 3)
        if not batch:
            break
        got.extend(j.id for j in batch)
    assert len(got) == 100 == len(set(got))


def test_purge_deletes_only_finished_jobs_past_the_retention(queue: JobQueue) -> None:
    q = JobQueue(queue.engine, QueueSettings(retention_days=1e-9))  # ~86 microseconds
    done = q.submit_now("t", {}, "k", tags=[{"key": "a", "value": "b"}], webhook_url="http://127.0.0.1:9/h")
    active = q.submit_now("t", {}, "k")
    [claimed] = q.claim(["t"], 1)
    assert claimed.id == done.id
    q.complete(claimed, {})
    q.record_delivery(done.id, 1, 200, None, 1.0, "delivered")
    poll(lambda: q.purge() >= 1)
    assert q.get_now(done.id) is None and q.deliveries(done.id) == []
    assert q.get_now(active.id) is not None  # queued: never purged
    assert JobQueue(queue.engine, QueueSettings(retention_days=0)).purge() == 0  # 0: kept forever
    with queue.engine.connect() as conn:
        assert conn.execute(select(job_tags.c.job_id).where(job_tags.c.job_id == done.id)).all() == []
