"""What operators see: Prometheus metrics, request ids, probes and CORS.

Metric tests read /metrics before and after their own requests and check the difference, so they
hold on the shared session server whatever else ran before.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import upstream_catalog
from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://dashboard.example.org"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: ServerProcess) -> Samples:
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels) in samples if n == name and label in dict(labels)}


def chat(
    server: ServerProcess,
    key: str,
    model: str = "standin",
    path: str = "/v1/chat/completions",
    **extra: object,
) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}",
        json={"model": model, "messages": MESSAGES, **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


# --- metrics -----------------------------------------------------------------------------------


def test_requests_total_counts_by_route_method_status(server: ServerProcess, key: str) -> None:
    before = scrape(server)
    for _ in range(2):
        assert chat(server, key).status_code == 200
    assert chat(server, "sk-ig-wrong").status_code == 401
    after = scrape(server)
    assert "/v1/chat/completions" in label_values(after, "infergate_requests_total", "route")
    labels = {"route": "/v1/chat/completions", "method": "POST"}
    assert (
        value(after, "infergate_requests_total", **labels, status="200")
        - value(before, "infergate_requests_total", **labels, status="200")
        == 2
    )
    assert (
        value(after, "infergate_requests_total", **labels, status="401")
        - value(before, "infergate_requests_total", **labels, status="401")
        == 1
    )


def test_route_label_is_the_public_path(server: ServerProcess, key: str) -> None:
    assert chat(server, key).status_code == 200
    assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    routes = label_values(scrape(server), "infergate_requests_total", "route")
    assert {"/v1/chat/completions", "/v1/models"} <= routes, routes


def test_unknown_paths_do_not_make_new_label_values(server: ServerProcess, key: str) -> None:
    """A scanner probing random paths must not blow up the metric's cardinality."""
    before = scrape(server)
    probe = f"/v1/probe-{uuid.uuid4().hex}"
    assert httpx.get(f"{server.url}{probe}").status_code == 404
    after = scrape(server)
    assert not any(probe in r for r in label_values(after, "infergate_requests_total", "route"))
    assert (
        value(after, "infergate_requests_total", route="unmatched", method="GET", status="404")
        - value(before, "infergate_requests_total", route="unmatched", method="GET", status="404")
        == 1
    )


def test_path_parameters_stay_templated(server: ServerProcess) -> None:
    ghost = str(uuid.uuid4())
    r = httpx.delete(f"{server.url}/v2/gen-ai/models/api_keys/{ghost}", headers=server.admin())
    assert r.status_code == 404
    routes = label_values(scrape(server), "infergate_requests_total", "route")
    assert "/v2/gen-ai/models/api_keys/{api_key_uuid}" in routes
    assert not any(ghost in r for r in routes)


def test_request_duration_histogram(server: ServerProcess) -> None:
    before = scrape(server)
    for _ in range(3):
        assert httpx.get(f"{server.url}/health").status_code == 200
    after = scrape(server)
    name = "infergate_request_duration_seconds"
    assert (
        value(after, f"{name}_count", route="/health") - value(before, f"{name}_count", route="/health") == 3
    )
    assert value(after, f"{name}_sum", route="/health") > value(before, f"{name}_sum", route="/health")
    buckets = {
        dict(labels)["le"]: v
        for (n, labels), v in after.items()
        if n == f"{name}_bucket" and dict(labels).get("route") == "/health"
    }
    assert buckets["+Inf"] == value(after, f"{name}_count", route="/health")
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative


def test_tokens_total_by_model(server: ServerProcess, key: str) -> None:
    before = scrape(server)
    r = chat(server, key)
    assert r.status_code == 200
    usage = r.json()["usage"]
    after = scrape(server)
    for kind, billed in (("input", usage["prompt_tokens"]), ("output", usage["completion_tokens"])):
        delta = value(after, "infergate_tokens_total", model="standin", type=kind) - value(
            before, "infergate_tokens_total", model="standin", type=kind
        )
        assert delta == billed, kind
    assert usage["completion_tokens"] == 7


def test_tokens_of_a_stream_are_counted(server: ServerProcess, key: str) -> None:
    before = scrape(server)
    r = chat(server, key, stream=True)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    after = scrape(server)
    delta = value(after, "infergate_tokens_total", model="standin", type="output") - value(
        before, "infergate_tokens_total", model="standin", type="output"
    )
    assert delta == 7


def test_upstream_errors_total_after_an_upstream_failure(server: ServerProcess, key: str) -> None:
    before = scrape(server)
    r = chat(server, key, model="standin-fail-500")
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "upstream_error"
    after = scrape(server)
    name = "infergate_upstream_errors_total"
    assert (
        value(after, name, model="standin-fail-500", kind="http_500")
        - value(before, name, model="standin-fail-500", kind="http_500")
        == 1
    )
    # a client error is not an upstream error
    chat(server, key, model="no-such-model")
    assert value(scrape(server), name, model="no-such-model", kind="http_404") == 0


def test_unreachable_upstream_is_counted(server: ServerProcess, key: str) -> None:
    before = scrape(server)
    r = chat(server, key, model="standin-down")
    assert r.status_code == 503, r.text
    after = scrape(server)
    name = "infergate_upstream_errors_total"
    assert (
        value(after, name, model="standin-down", kind="unreachable")
        - value(before, name, model="standin-down", kind="unreachable")
        == 1
    )


def test_metrics_carry_no_secrets(server: ServerProcess, key: str) -> None:
    chat(server, key)
    text = httpx.get(f"{server.url}/metrics").text
    assert key not in text and "sk-ig-" not in text


# --- request ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "auth", "status"),
    [
        ("GET", "/health", None, 200),
        ("GET", "/ready", None, 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/openapi.json", None, 200),
        ("GET", "/v1/models", "key", 200),
        ("GET", "/v1/models", None, 401),
        ("GET", "/v2/gen-ai/models/api_keys", "admin", 200),
        ("GET", "/v2/gen-ai/usage", "admin", 200),
        ("GET", "/v2/gen-ai/usage", "key", 401),
        ("GET", "/nope", None, 404),
        ("PUT", "/health", None, 405),
    ],
)
def test_every_response_has_a_request_id(
    server: ServerProcess, key: str, method: str, path: str, auth: str | None, status: int
) -> None:
    headers = server.admin() if auth == "admin" else {"Authorization": f"Bearer {key}"} if auth else {}
    r = httpx.request(method, f"{server.url}{path}", headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["x-request-id"].startswith("req_")


def test_request_ids_are_unique_and_match_the_error_body(server: ServerProcess, key: str) -> None:
    ids = {httpx.get(f"{server.url}/health").headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20
    r = httpx.get(f"{server.url}/v2/gen-ai/models/api_keys")  # no token: DigitalOcean error shape
    assert r.status_code == 401 and r.json()["request_id"] == r.headers["x-request-id"]


def test_streamed_and_failed_chats_have_request_ids(server: ServerProcess, key: str) -> None:
    for r in (
        chat(server, key, stream=True),
        chat(server, key, model="standin-fail-500"),
        chat(server, key, model="no-such-model"),
    ):
        assert r.headers["x-request-id"].startswith("req_"), r.status_code


# --- probes ------------------------------------------------------------------------------------


def test_health_and_ready(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.get(f"{server.url}/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def _pg_admin() -> psycopg.Connection:
    for user in ("postgres", "root"):
        try:
            return psycopg.connect(
                f"postgresql://{user}@127.0.0.1:5432/test", autocommit=True, connect_timeout=3
            )
        except psycopg.OperationalError:
            continue
    pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432 (database 'test'): cannot take a database away")


def test_ready_is_503_when_the_database_goes_away(upstream: StandInUpstream, tmp_path: Path) -> None:
    admin = _pg_admin()
    name = f"infergate_ready_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://{admin.info.user}@127.0.0.1:5432/{name}"
    proc = ServerProcess(
        tmp_path / "ready", upstream_catalog(upstream.base_url), env={"INFERGATE_DATABASE_URL": url}
    )
    try:
        proc.start()
        assert httpx.get(f"{proc.url}/ready").status_code == 200
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        r = httpx.get(f"{proc.url}/ready", timeout=30)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert "database" in error["message"] and error["type"] == "service_unavailable"
        assert r.headers["x-request-id"].startswith("req_")
        assert httpx.get(f"{proc.url}/health").status_code == 200  # alive, just not ready
    finally:
        proc.stop()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# --- CORS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cors_server(
    upstream: StandInUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("cors"),
        upstream_catalog(upstream.base_url),
        env={"INFERGATE_CORS_ORIGINS": f"{ORIGIN}, {OTHER_ORIGIN}"},
    ).start()
    yield proc
    proc.stop()


def preflight(server: ServerProcess, origin: str, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.options(
        f"{server.url}{path}",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-lang",
        },
    )


@pytest.mark.parametrize("origin", [ORIGIN, OTHER_ORIGIN])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions", "/v2/gen-ai/models/api_keys"])
def test_cors_preflight_for_allowed_origins(cors_server: ServerProcess, origin: str, path: str) -> None:
    r = preflight(cors_server, origin, path)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == origin
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-lang"} <= allowed
    assert int(r.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in r.headers  # bearer keys, no cookies


def test_cors_preflight_refuses_other_origins(cors_server: ServerProcess) -> None:
    r = preflight(cors_server, "https://evil.example")
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers


def test_cors_actual_request_exposes_the_request_id(cors_server: ServerProcess) -> None:
    key = cors_server.create_key("browser")["secret_key"]
    r = httpx.post(
        f"{cors_server.url}/v1/chat/completions",
        json={"model": "standin", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}", "Origin": ORIGIN},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    r = httpx.get(f"{cors_server.url}/v1/models", headers={"Authorization": "Bearer nope", "Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN  # errors readable too
    r = httpx.get(f"{cors_server.url}/health", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_no_cors_headers_unless_configured(server: ServerProcess, key: str) -> None:
    r = preflight(server, ORIGIN)
    assert r.status_code == 405
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "standin", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}", "Origin": ORIGIN},
    )
    assert r.status_code == 200
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
