"""Workers as real processes on SQLite and PostgreSQL: kill -9 of a worker or of the server
mid-job (another process finishes the job), bounded retries, graceful hand-back on SIGTERM,
and billing once for a job that ran twice."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from infergate.jobs.queue import Job, JobQueue
from infergate.storage.db import open_database
from tests.support.server import INFERGATE, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CATALOG = """
builtins = false

[[models]]
id = "espeak-tts"
kind = "tts"
backend = "espeak"
input_price = 15.0
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'infergate.db'}"
        return
    name = f"infergate_workers_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "catalog.toml").write_text(CATALOG)
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "INFERGATE_DATA_DIR": str(data),
        "INFERGATE_CONFIG": str(data / "catalog.toml"),
        "INFERGATE_DATABASE_URL": db_url,
        "INFERGATE_JOB_HANDLERS": "tests.support.job_kinds",
        "INFERGATE_JOB_LEASE_SECONDS": "1",
        "INFERGATE_WORKER_POLL_MS": "50",
        "INFERGATE_SHUTDOWN_GRACE": "1",
        "INFERGATE_LEDGER_FLUSH_MS": "50",
    }


@pytest.fixture
def queue(env: dict[str, str]) -> Iterator[JobQueue]:
    url = env["INFERGATE_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
    engine = open_database(url)
    yield JobQueue(engine)
    engine.dispose()


class WorkerProcess:
    def __init__(self, env: dict[str, str], log: Path, concurrency: int = 2) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [INFERGATE, "worker", "--concurrency", str(concurrency)], env=env, stdout=out, stderr=out
            )
        wait_for(lambda: "ready" in self.output() or self.proc.poll() is not None, what="worker ready")
        assert self.proc.poll() is None, self.output()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def workers(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**kw: Any) -> WorkerProcess:
        worker = WorkerProcess(kw.pop("env", env), tmp_path / f"worker-{len(started)}.log", **kw)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def job_now(queue: JobQueue, job_id: str) -> Job:
    job = queue.get_now(job_id, admin=True)
    assert job is not None
    return job


def started_by(folder: Path, pid: int, attempt: int) -> Callable[[], bool]:
    return lambda: (folder / f"started-{pid}-{attempt}").exists()


def test_kill_9_of_a_worker_mid_job_another_worker_finishes_it(
    queue: JobQueue, workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    first = workers()
    hold = tmp_path / "hold"
    job = queue.submit_now("test.slow", {"dir": str(hold)}, None)
    wait_for(started_by(hold, first.pid, 1), what="the first worker to start the job")
    assert job_now(queue, job.id).status == "IN_PROGRESS"
    first.kill()
    second = workers()
    wait_for(started_by(hold, second.pid, 2), what="the second worker to take the job over")
    (hold / "release").write_text("")
    done = wait_for(lambda: (j := job_now(queue, job.id)).status == "COMPLETED" and j, what="COMPLETED")
    assert done.output == {"pid": second.pid, "attempts": 2} and done.attempts == 2


def test_a_job_whose_workers_keep_dying_fails_with_the_reason(
    queue: JobQueue, workers: Callable[..., WorkerProcess], env: dict[str, str], tmp_path: Path
) -> None:
    bounded = {**env, "INFERGATE_JOB_MAX_ATTEMPTS": "2"}
    hold = tmp_path / "hold"
    job = queue.submit_now("test.slow", {"dir": str(hold)}, None, max_attempts=2)
    for attempt in (1, 2):
        worker = workers(env=bounded)
        wait_for(started_by(hold, worker.pid, attempt), what=f"attempt {attempt}")
        worker.kill()
    workers(env=bounded)  # the third claim gives up instead of running it again
    failed = wait_for(lambda: (j := job_now(queue, job.id)).status == "FAILED" and j, what="FAILED")
    assert "abandoned 2 time(s)" in (failed.error or "") and failed.output is None
    assert len(list(hold.glob("started-*"))) == 2


def test_sigterm_hands_a_running_job_back_without_counting_the_attempt(
    queue: JobQueue, workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    worker = workers()
    hold = tmp_path / "hold"
    job = queue.submit_now("test.slow", {"dir": str(hold)}, None)
    wait_for(started_by(hold, worker.pid, 1), what="the job to start")
    assert worker.stop() == 0  # grace (1 s) runs out: the job is handed back
    back = job_now(queue, job.id)
    assert back.status == "QUEUED" and back.attempts == 0 and back.error is None
    assert "handed back" in worker.output()
    (hold / "release").write_text("")
    again = workers()
    done = wait_for(lambda: (j := job_now(queue, job.id)).status == "COMPLETED" and j, what="COMPLETED")
    assert done.output == {"pid": again.pid, "attempts": 1}


def test_kill_9_of_the_server_mid_job_and_billing_once(
    queue: JobQueue, env: dict[str, str], tmp_path: Path, workers: Callable[..., WorkerProcess]
) -> None:
    """The in-process worker of a server dies with it; the restarted server finishes the job, and
    the speech job that ran twice has one ledger row."""
    own = {k: v for k, v in env.items() if k != "INFERGATE_DATA_DIR"}
    server = ServerProcess(Path(env["INFERGATE_DATA_DIR"]), env=own).start()
    try:
        secret = server.create_key("killed")["secret_key"]
        hold = tmp_path / "hold"
        r = httpx.post(
            f"{server.url}/v1/async-invoke",
            json={"model_id": "espeak-tts", "input": {"text": f"HOLD {hold} and then speak"}},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["request_id"]
        slow = queue.submit_now("test.slow", {"dir": str(tmp_path / "slow")}, None)
        wait_for(started_by(hold, server.proc.pid, 1), what="the server's worker to start the job")  # type: ignore[union-attr]
        wait_for(started_by(tmp_path / "slow", server.proc.pid, 1), what="the slow job to start")  # type: ignore[union-attr]
        server.proc.kill()  # type: ignore[union-attr]
        server.proc.wait()  # type: ignore[union-attr]
        (hold / "release").write_text("")
        (tmp_path / "slow" / "release").write_text("")
        server.start()
        done = wait_for(
            lambda: (j := job_now(queue, job_id)).status in ("COMPLETED", "FAILED") and j, what="done"
        )
        assert done.status == "COMPLETED" and done.attempts == 2, done.error
        assert done.output["audio"]["file_size"] > 1000
        assert job_now(queue, slow.id).output == {"pid": server.proc.pid, "attempts": 2}  # type: ignore[union-attr]
        with queue.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT input_tokens, status FROM usage_records WHERE request_id = :r"), {"r": job_id}
            ).all()
        deadline = time.monotonic() + 10
        while not rows and time.monotonic() < deadline:
            time.sleep(0.05)
            with queue.engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT input_tokens, status FROM usage_records WHERE request_id = :r"),
                    {"r": job_id},
                ).all()
        assert [tuple(r) for r in rows] == [(len(f"HOLD {hold} and then speak"), 200)]
    finally:
        server.stop()


def test_cancel_through_a_server_stops_the_task_in_a_standalone_worker(
    env: dict[str, str], tmp_path: Path, workers: Callable[..., WorkerProcess], queue: JobQueue
) -> None:
    own = {k: v for k, v in env.items() if k != "INFERGATE_DATA_DIR"} | {"INFERGATE_WORKER": "0"}
    server = ServerProcess(Path(env["INFERGATE_DATA_DIR"]), env=own).start()
    try:
        worker = workers()
        secret = server.create_key("cancel-remote")["secret_key"]
        headers = {"Authorization": f"Bearer {secret}"}
        hold = tmp_path / "hold"
        r = httpx.post(
            f"{server.url}/v1/async-invoke",
            json={"model_id": "espeak-tts", "input": {"text": f"HOLD {hold}"}},
            headers=headers,
        )
        job_id = r.json()["request_id"]
        wait_for(started_by(hold, worker.pid, 1), what="the standalone worker to start the job")
        r = httpx.post(f"{server.url}/v1/async-invoke/{job_id}/cancel", headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
        wait_for(lambda: (hold / f"cancelled-{worker.pid}").exists(), timeout=10, what="the task cancelled")
        assert job_now(queue, job_id).status == "CANCELLED"
    finally:
        server.stop()


def test_a_deleted_keys_queued_jobs_are_not_run(
    env: dict[str, str], tmp_path: Path, workers: Callable[..., WorkerProcess], queue: JobQueue
) -> None:
    own = {k: v for k, v in env.items() if k != "INFERGATE_DATA_DIR"} | {"INFERGATE_WORKER": "0"}
    server = ServerProcess(Path(env["INFERGATE_DATA_DIR"]), env=own).start()
    try:
        key = server.create_key("doomed")
        r = httpx.post(
            f"{server.url}/v1/async-invoke",
            json={"model_id": "espeak-tts", "input": {"text": "Never spoken."}},
            headers={"Authorization": f"Bearer {key['secret_key']}"},
        )
        job_id = r.json()["request_id"]
        deleted = httpx.delete(
            f"{server.url}/v2/gen-ai/models/api_keys/{key['uuid']}", headers=server.admin()
        )
        assert deleted.status_code == 200
        workers()
        failed = wait_for(lambda: (j := job_now(queue, job_id)).status == "FAILED" and j, what="FAILED")
        assert "key that created this job was deleted" in (failed.error or "")
        with queue.engine.connect() as conn:
            billed = conn.execute(
                text("SELECT count(*) FROM usage_records WHERE request_id = :r"), {"r": job_id}
            )
            assert billed.scalar() == 0
    finally:
        server.stop()
