"""Background responses through the real openai SDK: queued at once, polled to the end and billed
once; cancelled while running; streamed and resumed with starting_after; and a server killed
mid-job: the job runs again (nothing streamed yet) or is marked failed with the reason."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from tests.conftest import upstream_catalog
from tests.support.ledger import rows_where
from tests.support.pg_database import pg_url_fixture  # noqa: F401 - the pg_url fixture
from tests.support.server import INFERGATE, ServerProcess
from tests.support.upstream import StandInUpstream


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def strict(response: Response) -> Response:
    return Response.model_validate(response.model_dump(mode="json"), strict=True)


def test_background_is_queued_then_polled_to_completion(server: ServerProcess) -> None:
    client = server.openai_client("bg-poll")
    queued = client.responses.create(model="standin", input="What is the capital of France?", background=True)
    assert queued.status == "queued" and queued.background is True
    strict(queued)
    done = wait_for(
        lambda: (r := client.responses.retrieve(queued.id)).status not in ("queued", "in_progress") and r,
        "the background response to finish",
    )
    assert strict(done).status == "completed" and done.output_text == "Paris is the capital of France."
    assert done.usage is not None and done.usage.output_tokens > 0
    [row] = rows_where(server, f"request_id = '{queued.id}'")  # one ledger row, keyed by the response
    assert row["endpoint"] == "responses" and row["output_tokens"] == done.usage.output_tokens
    items = client.responses.input_items.list(queued.id)
    assert [i.content[0].text for i in items.data] == ["What is the capital of France?"]  # type: ignore[union-attr]
    other = server.openai_client("bg-poll-other")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(queued.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.cancel(queued.id)


def test_cancel_a_running_background_response(server: ServerProcess) -> None:
    client = server.openai_client("bg-cancel")
    # the stand-in upstream takes 2 s to answer this model: the job is running meanwhile
    queued = client.responses.create(model="standin-slow-ok", input="Take your time.", background=True)
    wait_for(lambda: client.responses.retrieve(queued.id).status == "in_progress", "the job to start")
    cancelled = client.responses.cancel(queued.id)
    assert strict(cancelled).status == "cancelled"
    # the job's task was stopped mid-call: its bill settles as a client-gone request, long before 2 s
    [row] = rows_where(server, f"request_id = '{queued.id}'")
    assert row["status"] == 499 and row["latency_ms"] < 2000
    assert client.responses.retrieve(queued.id).status == "cancelled"
    assert client.responses.cancel(queued.id).status == "cancelled"  # cancelling again changes nothing
    plain = client.responses.create(model="standin", input="hi")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)


def test_deleting_a_running_background_response_stops_it(server: ServerProcess) -> None:
    client = server.openai_client("bg-delete")
    queued = client.responses.create(model="standin-slow-ok", input="Take your time.", background=True)
    wait_for(lambda: client.responses.retrieve(queued.id).status == "in_progress", "the job to start")
    client.responses.delete(queued.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(queued.id)
    [row] = rows_where(server, f"request_id = '{queued.id}'")  # the job was stopped, not left running
    assert row["status"] == 499 and row["latency_ms"] < 2000


def test_background_stream_resumes_after_a_disconnect(server: ServerProcess) -> None:
    client = server.openai_client("bg-stream")
    seen: list[Any] = []
    with client.responses.create(
        model="standin-slowstream", input="Stream slowly.", background=True, stream=True
    ) as stream:
        for event in stream:
            seen.append(event)
            if sum(e.type == "response.output_text.delta" for e in seen) >= 3:
                break  # the client goes away mid-stream
    response_id = seen[0].response.id
    assert seen[0].type == "response.created"
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    last = seen[-1].sequence_number
    resumed: list[Any] = []
    with client.responses.retrieve(response_id, stream=True, starting_after=last) as stream:
        for event in stream:
            resumed.append(event)
            if len(resumed) == 3:
                break
    assert [e.sequence_number for e in resumed] == [last + 1, last + 2, last + 3]
    assert all(e.type == "response.output_text.delta" for e in resumed)
    # a replay from the start gives the same first events
    with client.responses.retrieve(response_id, stream=True, starting_after=-1) as stream:
        replay = [next(iter(stream)) for _ in range(1)]
    assert replay[0].type == "response.created" and replay[0].sequence_number == 0
    client.responses.cancel(response_id)
    with client.responses.retrieve(response_id, stream=True, starting_after=last) as stream:
        rest = list(stream)  # ends once the response is over
    assert rest and rest[0].sequence_number == last + 1
    plain = client.responses.create(model="standin", input="hi")
    with pytest.raises(openai.BadRequestError):
        client.responses.retrieve(plain.id, stream=True)


def test_a_killed_server_resumes_or_fails_its_background_jobs(
    upstream: StandInUpstream, tmp_path: Path
) -> None:
    env = {"INFERGATE_JOB_LEASE_SECONDS": "1"}
    server = ServerProcess(tmp_path / "bg-restart", upstream_catalog(upstream.base_url), env=env).start()
    try:
        key = server.create_key("bg-restart")["secret_key"]

        def client() -> openai.OpenAI:
            return openai.OpenAI(base_url=f"{server.url}/v1/", api_key=key, max_retries=0)

        # streamed: events were delivered before the crash, so it cannot be re-run
        streamed: list[Any] = []
        with client().responses.create(
            model="standin-slowstream", input="Stream then crash.", background=True, stream=True
        ) as stream:
            for event in stream:
                streamed.append(event)
                if event.type == "response.output_text.delta":
                    break
        # not streamed: still waiting on the slow upstream when the server dies
        quiet = client().responses.create(model="standin-slow-ok", input="Slow answer.", background=True)
        wait_for(
            lambda: client().responses.retrieve(quiet.id).status == "in_progress", "the slow job to start"
        )
        assert server.proc is not None
        server.proc.kill()  # no shutdown: leases are left to expire
        server.proc.wait()
        server.start()
        again = wait_for(
            lambda: (r := client().responses.retrieve(quiet.id)).status in ("completed", "failed") and r,
            "the interrupted job to run again",
        )
        assert again.status == "completed" and again.output_text == "Paris is the capital of France."
        failed = wait_for(
            lambda: (r := client().responses.retrieve(streamed[0].response.id)).status != "in_progress" and r,
            "the streamed job to be marked failed",
        )
        assert strict(failed).status == "failed"
        assert failed.error is not None and "stopped" in failed.error.message
    finally:
        server.stop()


def test_a_standalone_worker_runs_background_responses(upstream: StandInUpstream, tmp_path: Path) -> None:
    """The server only queues (its own worker off); `infergate worker` on the same database runs it."""
    server = ServerProcess(
        tmp_path / "bg-worker", upstream_catalog(upstream.base_url), env={"INFERGATE_WORKER": "0"}
    ).start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        client = server.openai_client("bg-worker")
        queued = client.responses.create(model="standin", input="Who runs me?", background=True)
        assert client.responses.retrieve(queued.id).status == "queued"
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen([INFERGATE, "worker"], env=server.env, stdout=log, stderr=subprocess.STDOUT)
        done = wait_for(
            lambda: (r := client.responses.retrieve(queued.id)).status not in ("queued", "in_progress") and r,
            "the standalone worker to run the response",
        )
        assert done.status == "completed" and done.output_text == "Paris is the capital of France."
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        server.stop()


def test_a_job_the_queue_gives_up_on_fails_its_response(upstream: StandInUpstream, tmp_path: Path) -> None:
    """One attempt allowed, and its worker killed: the queue fails the job without running the
    handler again; the sweep carries the queue's reason over to the response."""
    env = {"INFERGATE_JOB_LEASE_SECONDS": "1", "INFERGATE_JOB_MAX_ATTEMPTS": "1"}
    server = ServerProcess(tmp_path / "bg-abandoned", upstream_catalog(upstream.base_url), env=env).start()
    try:
        key = server.create_key("bg-abandoned")["secret_key"]

        def client() -> openai.OpenAI:
            return openai.OpenAI(base_url=f"{server.url}/v1/", api_key=key, max_retries=0)

        queued = client().responses.create(model="standin-slow-ok", input="Slow answer.", background=True)
        wait_for(lambda: client().responses.retrieve(queued.id).status == "in_progress", "the job to start")
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
        server.start()
        failed = wait_for(
            lambda: (r := client().responses.retrieve(queued.id)).status != "in_progress" and r,
            "the abandoned response to be marked failed",
        )
        assert strict(failed).status == "failed"
        assert failed.error is not None and "abandoned" in failed.error.message
    finally:
        server.stop()


def test_background_across_two_servers_on_postgres(
    pg_url: str, upstream: StandInUpstream, tmp_path: Path
) -> None:
    """Queued on a server without a worker, run by another one sharing PostgreSQL: polled, streamed
    and cancelled through the first."""
    catalog = upstream_catalog(upstream.base_url)
    front = ServerProcess(
        tmp_path / "front", catalog, env={"INFERGATE_DATABASE_URL": pg_url, "INFERGATE_WORKER": "0"}
    ).start()
    back = ServerProcess(tmp_path / "back", catalog, env={"INFERGATE_DATABASE_URL": pg_url}).start()
    try:
        key = front.create_key("bg-pg")["secret_key"]
        client = openai.OpenAI(base_url=f"{front.url}/v1/", api_key=key, max_retries=0)
        quick = client.responses.create(model="standin", input="Quick one.", background=True)
        done = wait_for(
            lambda: (r := client.responses.retrieve(quick.id)).status == "completed" and r, "the other server"
        )
        assert done.output_text == "Paris is the capital of France."
        seen: list[Any] = []
        with client.responses.create(
            model="standin-slowstream", input="Stream from elsewhere.", background=True, stream=True
        ) as stream:
            for event in stream:  # events written by the other server, read from the database
                seen.append(event)
                if sum(e.type == "response.output_text.delta" for e in seen) >= 2:
                    break
        response_id = seen[0].response.id
        assert client.responses.cancel(response_id).status == "cancelled"
        with client.responses.retrieve(
            response_id, stream=True, starting_after=seen[-1].sequence_number
        ) as s:
            rest = list(s)  # ends: the response is over
        assert all(e.sequence_number > seen[-1].sequence_number for e in rest)
        assert client.responses.retrieve(response_id).status == "cancelled"
    finally:
        front.stop()
        back.stop()
