"""Property-based run of the server's own OpenAPI document (schemathesis): no input makes a 5xx, and
every answer has a status and a body that the document declares.

Bounded: a fixed number of derandomized examples per operation and generation mode (valid inputs,
then invalid ones), so the run is repeatable and short. The /v2 management routes get the admin
token, the inference routes a model access key (the document declares no security scheme, so the
header is added per call).

schemathesis' own pytest integration (`schemathesis.pytest.from_fixture`) does not run under
pytest 9 (it sets `request.node._nodeid`, which pytest 9 removed), so each operation is driven with
`operation.as_strategy()` and Hypothesis here; the checks are schemathesis' own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.support.server import ServerProcess

EXAMPLES = 40
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
OPERATIONS = [
    "GET /v1/models",
    "POST /v1/chat/completions",
    "GET /v2/gen-ai/models",
    "POST /v2/gen-ai/models/api_keys",
    "GET /v2/gen-ai/models/api_keys",
    "PUT /v2/gen-ai/models/api_keys/{api_key_uuid}",
    "PUT /v2/gen-ai/models/api_keys/{api_key_uuid}/regenerate",
    "DELETE /v2/gen-ai/models/api_keys/{api_key_uuid}",
    "GET /v2/gen-ai/usage",
    "GET /health",
    "GET /ready",
    "GET /metrics",
]
WITH_BODY = [
    op
    for op in OPERATIONS
    if op.startswith(("POST ", "PUT /v2/gen-ai/models/api_keys/{api_key_uuid}"))
    and not op.endswith("/regenerate")
]
ADMIN_PATHS = ("/v2/gen-ai/models/api_keys", "/v2/gen-ai/usage")


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def dangling_refs(document: dict[str, Any]) -> set[str]:
    components = document.get("components", {}).get("schemas", {})
    return {
        r
        for r in refs(document)
        if not (r.startswith("#/components/schemas/") and r.rsplit("/", 1)[-1] in components)
    }


@pytest.fixture(scope="module")
def document(server: ServerProcess) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    return r.json()


@pytest.fixture(scope="module")
def api_schema(document: dict[str, Any], server: ServerProcess) -> schemathesis.BaseSchema:
    loaded = schemathesis.openapi.from_dict(document)
    loaded.config.update(base_url=server.url)
    return loaded


def labels(api_schema: schemathesis.BaseSchema) -> list[str]:
    return [op.ok().label for op in api_schema.get_all_operations()]


def has_inputs(operation: schemathesis.APIOperation) -> bool:
    return any(len(getattr(operation, part)) for part in ("path_parameters", "query", "headers", "body"))


def fuzz(api_schema: schemathesis.BaseSchema, label: str, server: ServerProcess, key: str) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the OpenAPI document: {labels(api_schema)}"
    headers = server.admin() if operation.path.startswith(ADMIN_PATHS) else {"Authorization": f"Bearer {key}"}
    run(operation.as_strategy(generation_mode=GenerationMode.POSITIVE), headers, positive=True)
    if has_inputs(operation):
        # Unsatisfiable: every value is valid (a free-form string in the path), nothing invalid to send
        with contextlib.suppress(hypothesis.errors.Unsatisfiable):
            run(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), headers, positive=False)


def satisfy_chat_rules(body: dict[str, Any]) -> None:
    """Rules JSON Schema cannot say (a user message needs content, ...): applied to valid chat bodies, so
    most of them get past validation and half reach the stand-in upstream instead of a 404."""
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            if message.get("content") is None and message.get("role") != "assistant":
                message["content"] = "hi"
            if (
                message.get("role") == "assistant"
                and message.get("content") is None
                and not message.get("tool_calls")
            ):
                message["content"] = "hi"
            if message.get("role") == "tool" and not message.get("tool_call_id"):
                message["tool_call_id"] = "call_1"
    if body.get("top_logprobs") is not None:
        body["logprobs"] = True
    if body.get("stream_options") is not None:
        body["stream"] = True
    if len(str(body)) % 2:
        body["model"] = "standin"


def run(strategy: hypothesis.strategies.SearchStrategy, headers: dict[str, str], positive: bool) -> None:
    @hypothesis.given(case=strategy)
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        if positive and case.operation.label == "POST /v1/chat/completions" and isinstance(case.body, dict):
            satisfy_chat_rules(case.body)
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    check()


def test_document_lists_the_public_routes(api_schema: schemathesis.BaseSchema) -> None:
    """The run is only as good as the document: the routes clients use must be in it, with their bodies."""
    assert set(OPERATIONS) <= set(labels(api_schema)), labels(api_schema)
    for label in WITH_BODY:
        operation = api_schema.find_operation_by_label(label)
        assert operation is not None and len(operation.body) == 1, f"{label}: no request body in the document"


def test_every_ref_in_the_served_document_resolves(document: dict[str, Any]) -> None:
    assert dangling_refs(document) == set()


def test_served_document_shows_the_chat_body(document: dict[str, Any]) -> None:
    chat = schemathesis.openapi.from_dict(document).find_operation_by_label("POST /v1/chat/completions")
    assert chat is not None and len(chat.body) == 1


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_conforms_to_the_document(
    api_schema: schemathesis.BaseSchema, server: ServerProcess, key: str, label: str
) -> None:
    fuzz(api_schema, label, server, key)


def test_operations_added_later_conform_too(
    api_schema: schemathesis.BaseSchema, server: ServerProcess, key: str
) -> None:
    """Routes added to the app after this file was written are fuzzed here, with no edit needed."""
    for label in labels(api_schema):
        if label not in OPERATIONS:
            fuzz(api_schema, label, server, key)
