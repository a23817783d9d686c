"""Job queue throughput: infergate's queue (SQLite, PostgreSQL) vs pgqueuer on the same PostgreSQL.

A trivial handler (returns a small dict), so what is measured is the queue: claim, lease,
completion write. For each target and worker count: W worker processes start and idle; the
parent enqueues N jobs in one transaction; the clock runs from that commit until every job is
done (counted in the database, polled every 10 ms). jobs/s = N / that time.

- infergate: `jobs.worker.Worker` (the loop `infergate worker` runs) with the noop handler,
  concurrency C per process (claims up to C at once).
- pgqueuer: `QueueManager` with the same handler, `batch_size` C per process (psycopg async driver).

Usage: .venv/bin/python bench/jobs_bench.py [--jobs 5000] [--workers 1,4] [--concurrency 32]
pgqueuer is a bench-only dependency: `.venv/bin/pip install -e '.[bench]'` (the row is skipped
with a note when it is missing). PostgreSQL: --pg-url (default the local server, its own database).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

HERE = Path(__file__).resolve().parent
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_DB = "infergate_jobs_bench"
KIND = "bench.noop"


# -- worker processes (this script re-run with --serve) ----------------------------------------------


async def noop(job, _platform):  # type: ignore[no-untyped-def]
    return {"ok": True}


async def serve_infergate(url: str, concurrency: int) -> None:
    from infergate.jobs.queue import JobQueue
    from infergate.jobs.worker import Worker, WorkerSettings, register_handler
    from infergate.storage.db import create_db_engine

    register_handler(KIND, noop)
    queue = JobQueue(create_db_engine(url))
    worker = Worker(queue, None, WorkerSettings(concurrency=concurrency, poll_seconds=0.01))
    worker.kinds = [KIND]  # the bench's kind only
    print("ready", flush=True)
    await worker.run_forever()


async def serve_pgqueuer(dsn: str, concurrency: int) -> None:
    import psycopg
    from pgqueuer import QueueManager
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    manager = QueueManager(Queries(PsycopgDriver(conn)))

    @manager.entrypoint(KIND)
    async def _noop(job) -> None:  # type: ignore[no-untyped-def]
        return None

    print("ready", flush=True)
    await manager.run(batch_size=concurrency)


# -- the parent: targets, timing, the table ------------------------------------------------------------


def start_workers(target: str, url: str, count: int, concurrency: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--serve", target, "--url", url, "--concurrency", str(concurrency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for proc in procs:
        line = proc.stdout.readline() if proc.stdout else ""
        if "ready" not in line:
            raise RuntimeError(f"{target} worker did not start (exit {proc.poll()})")
    return procs


def stop_workers(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_done(engine, count_sql: str, target: int, timeout: float, procs) -> float:  # type: ignore[no-untyped-def]
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker process died")
        with engine.connect() as conn:
            if conn.execute(text(count_sql)).scalar() >= target:
                return time.perf_counter()
        time.sleep(0.01)
    raise TimeoutError("jobs not done in time")


def run_infergate(url: str, workers: int, jobs: int, concurrency: int) -> float:
    from infergate.jobs.queue import JobQueue
    from infergate.storage.db import open_database

    engine = open_database(url)
    with engine.begin() as conn:
        for table in ("jobs", "job_tags", "job_deliveries"):
            conn.execute(text(f"DELETE FROM {table}"))
    queue = JobQueue(engine)
    procs = start_workers("infergate", url, workers, concurrency)
    try:
        started = time.perf_counter()
        queue.submit_many(KIND, ({"i": i} for i in range(jobs)))
        done = wait_done(engine, "SELECT count(*) FROM jobs WHERE status = 'COMPLETED'", jobs, 300, procs)
    finally:
        stop_workers(procs)
        engine.dispose()
    return jobs / (done - started)


async def reset_pgqueuer(dsn: str) -> None:
    """Install pgqueuer's schema once, then empty its queue and log."""
    import psycopg
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    queries = Queries(PsycopgDriver(conn))
    if not await queries.schema_is_installed():
        await queries.install()
    await queries.clear_queue()
    await queries.clear_queue_log()
    await conn.close()


def run_pgqueuer(dsn: str, workers: int, jobs: int, concurrency: int) -> float:
    import psycopg
    from pgqueuer.db import SyncPsycopgDriver
    from pgqueuer.queries import SyncQueries

    asyncio.run(reset_pgqueuer(dsn))
    procs = start_workers("pgqueuer", dsn, workers, concurrency)
    engine = create_engine(f"postgresql+psycopg://{dsn.split('://', 1)[1]}")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            queries = SyncQueries(SyncPsycopgDriver(conn))
            started = time.perf_counter()
            queries.enqueue([KIND] * jobs, [None] * jobs, [0] * jobs)
        # pgqueuer deletes a finished job from its queue table
        done = wait_done(engine, f"SELECT {jobs} - count(*) FROM pgqueuer", jobs, 300, procs)
    finally:
        stop_workers(procs)
        engine.dispose()
    return jobs / (done - started)


def ensure_pg_database() -> str:
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": PG_DB}).first():
            conn.execute(text(f'CREATE DATABASE "{PG_DB}"'))
    admin.dispose()
    return f"{PG_SERVER}/{PG_DB}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", default="1,4")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--serve", choices=("infergate", "pgqueuer"))
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.serve == "infergate":
        asyncio.run(serve_infergate(args.url, args.concurrency))
        return 0
    if args.serve == "pgqueuer":
        asyncio.run(serve_pgqueuer(args.url, args.concurrency))
        return 0

    pg_url = args.pg_url or ensure_pg_database()
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    counts = [int(w) for w in args.workers.split(",")]
    try:
        import pgqueuer  # noqa: F401

        have_pgqueuer = True
    except ImportError:
        have_pgqueuer = False
    rows: list[tuple[str, str, int, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in counts:
            sqlite_url = f"sqlite:///{Path(tmp) / f'bench-{workers}.db'}"
            print(f"infergate sqlite, {workers} worker(s)...", file=sys.stderr)
            rows.append(
                (
                    "infergate",
                    "SQLite",
                    workers,
                    run_infergate(sqlite_url, workers, args.jobs, args.concurrency),
                )
            )
            print(f"infergate postgresql, {workers} worker(s)...", file=sys.stderr)
            rows.append(
                (
                    "infergate",
                    "PostgreSQL",
                    workers,
                    run_infergate(pg_url, workers, args.jobs, args.concurrency),
                )
            )
            if have_pgqueuer:
                print(f"pgqueuer postgresql, {workers} worker(s)...", file=sys.stderr)
                rows.append(
                    (
                        "pgqueuer",
                        "PostgreSQL",
                        workers,
                        run_pgqueuer(dsn, workers, args.jobs, args.concurrency),
                    )
                )
    pgq = {w: r for name, _db, w, r in rows if name == "pgqueuer"}
    print(
        f"{args.jobs} trivial jobs, {os.cpu_count()} cores, "
        f"concurrency {args.concurrency} per worker process.\n"
    )
    print("| queue | database | workers | jobs/s | vs pgqueuer (same workers) |")
    print("|---|---|---|---|---|")
    for name, db, workers, rate in rows:
        ratio = f"{rate / pgq[workers]:.0%}" if db == "PostgreSQL" and workers in pgq and rate else "—"
        print(f"| {name} | {db} | {workers} | {rate:,.0f} | {ratio} |")
    if not have_pgqueuer:
        print("\n_pgqueuer is not installed (`.venv/bin/pip install -e '.[bench]'`): its rows are skipped._")
    return 0


if __name__ == "__main__":
    sys.exit(main())
