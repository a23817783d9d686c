"""pydo, DigitalOcean's official client, against infergate served over HTTPS.

pydo (azure-core) refuses to send a bearer token over plain http, so a server that wants pydo
users serves TLS: here with a throwaway CA and a certificate for 127.0.0.1 made by `trustme`, and
pydo told to trust that CA through azure-core's `connection_verify=<CA file>`.

pydo 0.44.0 documents `genai.create_model_api_key` as retired on DigitalOcean and accepts only a
410 answer; infergate answers pydo's generated client with the created key and status 410, so
the generated method works unchanged (other clients get 200).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from azure.core.exceptions import (
    ClientAuthenticationError,
    ServiceRequestError,
)
from pydo import Client

from tests.conftest import upstream_catalog
from tests.support.server import ADMIN_TOKEN, ServerProcess
from tests.support.upstream import StandInUpstream

KEYS_PATH = "/v2/gen-ai/models/api_keys"
CHAT = {"model": "standin", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
ANSWER = "Paris is the capital of France."


class TLSFiles:
    def __init__(self, folder: Path) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        self.ca = str(folder / "ca.pem")
        self.cert = str(folder / "server.pem")
        self.key = str(folder / "server.key")
        ca.cert_pem.write_to_path(self.ca)
        cert.cert_chain_pems[0].write_to_path(self.cert)
        cert.private_key_pem.write_to_path(self.key)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return TLSFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(
    upstream: StandInUpstream, tls: TLSFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("tls-server"),
        upstream_catalog(upstream.base_url),
        args=["--tls-cert", tls.cert, "--tls-key", tls.key],
    )
    assert proc.url.startswith("https://")
    proc.start(verify=ssl.create_default_context(cafile=tls.ca))
    yield proc
    proc.stop()


def pydo_client(server: ServerProcess, tls: TLSFiles, token: str) -> Client:
    return Client(
        token=token,
        endpoint=server.url,
        inference_endpoint=server.url,
        connection_verify=tls.ca,
        retry_total=0,
    )


@pytest.fixture
def admin(tls_server: ServerProcess, tls: TLSFiles) -> Iterator[Client]:
    with pydo_client(tls_server, tls, ADMIN_TOKEN) as client:
        yield client


def create_key(admin: Client, name: str) -> dict[str, Any]:
    return admin.genai.create_model_api_key(body={"name": name})["api_key_info"]


def chat(client: Client) -> dict[str, Any]:
    return client.inference.create_chat_completion(body=CHAT)


def test_pydo_will_not_send_a_token_over_plain_http(tls_server: ServerProcess) -> None:
    """Why TLS matters: the same server over http is unreachable for pydo."""
    client = Client(token=ADMIN_TOKEN, endpoint=tls_server.url.replace("https://", "http://"), retry_total=0)
    with pytest.raises(ServiceRequestError, match="non-TLS"):
        client.genai.list_model_api_keys(page=1, per_page=10)


def test_certificate_is_checked(tls_server: ServerProcess, tls: TLSFiles) -> None:
    untrusting = Client(token=ADMIN_TOKEN, endpoint=tls_server.url, retry_total=0)  # system CAs only
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.genai.list_model_api_keys(page=1, per_page=10)
    r = httpx.get(f"{tls_server.url}/health", verify=ssl.create_default_context(cafile=tls.ca))
    assert r.status_code == 200 and r.url.scheme == "https"


def test_generated_create_returns_the_secret_once(
    admin: Client, tls: TLSFiles, tls_server: ServerProcess
) -> None:
    created = admin.genai.create_model_api_key(body={"name": "via-generated-create"})["api_key_info"]
    assert created["secret_key"].startswith("sk-ig-") and created["name"] == "via-generated-create"
    listed = admin.genai.list_model_api_keys(page=1, per_page=200)["api_key_infos"]
    assert [k["secret_key"] for k in listed if k["uuid"] == created["uuid"]] == [None]
    # any other client gets the ordinary 200
    r = httpx.post(
        f"{tls_server.url}{KEYS_PATH}",
        json={"name": "plain"},
        headers=tls_server.admin(),
        verify=ssl.create_default_context(cafile=tls.ca),
    )
    assert r.status_code == 200 and r.json()["api_key_info"]["secret_key"].startswith("sk-ig-")


def test_pydo_key_lifecycle_and_inference(tls_server: ServerProcess, tls: TLSFiles, admin: Client) -> None:
    created = create_key(admin, "pydo-lifecycle")
    uuid, secret = created["uuid"], created["secret_key"]
    assert (
        secret.startswith("sk-ig-") and created["name"] == "pydo-lifecycle" and created["deleted_at"] is None
    )

    listing = admin.genai.list_model_api_keys(page=1, per_page=10)
    mine = [k for k in listing["api_key_infos"] if k["uuid"] == uuid]
    assert len(mine) == 1 and mine[0]["secret_key"] is None  # the secret is shown only on create
    assert listing["meta"]["page"] == 1 and listing["meta"]["total"] >= 1

    renamed = admin.genai.update_model_api_key(uuid, body={"api_key_uuid": uuid, "name": "pydo-renamed"})
    assert renamed["api_key_info"]["uuid"] == uuid and renamed["api_key_info"]["name"] == "pydo-renamed"
    assert renamed["api_key_info"]["secret_key"] is None

    with pydo_client(tls_server, tls, secret) as user:
        completion = chat(user)
        assert completion["choices"][0]["message"]["content"] == ANSWER
        assert completion["model"] == "standin" and completion["usage"]["completion_tokens"] == 7
        facade = user.chat.completions.create(**CHAT)  # pydo's OpenAI-style facade over the same call
        assert facade.choices[0].message.content == ANSWER
        models = user.inference.list_models()
        assert models["object"] == "list" and "standin" in [m["id"] for m in models["data"]]

    regenerated = admin.genai.regenerate_model_api_key(uuid)["api_key_info"]
    new_secret = regenerated["secret_key"]
    assert regenerated["uuid"] == uuid and new_secret.startswith("sk-ig-") and new_secret != secret

    with pydo_client(tls_server, tls, secret) as old_user, pytest.raises(ClientAuthenticationError) as info:
        chat(old_user)  # right after regenerate, with no wait: the old secret is dead
    assert info.value.status_code == 401
    with pydo_client(tls_server, tls, new_secret) as new_user:
        assert chat(new_user)["choices"][0]["message"]["content"] == ANSWER

    deleted = admin.genai.delete_model_api_key(uuid)["api_key_info"]
    assert deleted["uuid"] == uuid and deleted["deleted_at"]
    with (
        pydo_client(tls_server, tls, new_secret) as gone_user,
        pytest.raises(ClientAuthenticationError) as info,
    ):
        chat(gone_user)
    assert info.value.status_code == 401

    listing = admin.genai.list_model_api_keys(page=1, per_page=200)
    assert uuid not in [k["uuid"] for k in listing["api_key_infos"]]
    # pydo lists 404 among these calls' expected statuses: it returns DigitalOcean's error body, no raise
    for gone in (
        admin.genai.regenerate_model_api_key(uuid),
        admin.genai.delete_model_api_key(uuid),
        admin.genai.update_model_api_key(uuid, body={"api_key_uuid": uuid, "name": "x"}),
    ):
        assert gone["id"] == "not_found" and uuid in gone["message"] and gone["request_id"].startswith("req_")


def test_pydo_list_pagination(admin: Client) -> None:
    before = admin.genai.list_model_api_keys(page=1, per_page=1)["meta"]["total"]
    made = [create_key(admin, f"page-{i}")["uuid"] for i in range(3)]
    total = before + 3
    first = admin.genai.list_model_api_keys(page=1, per_page=2)
    assert first["meta"] == {"page": 1, "pages": (total + 1) // 2, "total": total}
    assert len(first["api_key_infos"]) == 2
    assert first["links"]["pages"]["next"] and first["links"]["pages"]["previous"] is None
    seen = [
        k["uuid"]
        for p in range(1, (total + 1) // 2 + 1)
        for k in admin.genai.list_model_api_keys(page=p, per_page=2)["api_key_infos"]
    ]
    assert len(seen) == len(set(seen)) == total
    assert set(made) <= set(seen)
    assert seen[:3] == made[::-1]  # newest first


def test_pydo_management_needs_the_admin_token(
    tls_server: ServerProcess, tls: TLSFiles, admin: Client
) -> None:
    secret = create_key(admin, "not-an-admin")["secret_key"]
    with pydo_client(tls_server, tls, secret) as user, pytest.raises(ClientAuthenticationError) as info:
        user.genai.list_model_api_keys(page=1, per_page=10)
    assert info.value.status_code == 401
    body = info.value.response.json()
    assert body["id"] == "unauthorized" and body["request_id"].startswith(
        "req_"
    )  # DigitalOcean's error shape


def test_pydo_genai_list_models(admin: Client) -> None:
    listing = admin.genai.list_models()
    ids = [m["id"] for m in listing["models"]]
    assert "standin" in ids and listing["meta"]["total"] == len(ids)
