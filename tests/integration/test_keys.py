"""Model access key lifecycle through the management API and the CLI, with immediate revocation."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from tests.support.server import INFERGATE, ServerProcess


def chat_status(server: ServerProcess, secret: str) -> int:
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "standin", "messages": [{"role": "user", "content": "hi"}]},
    )
    return r.status_code


def test_api_lifecycle(server: ServerProcess) -> None:
    api = f"{server.url}/v2/gen-ai/models/api_keys"
    created = httpx.post(api, json={"name": "lifecycle"}, headers=server.admin()).json()["api_key_info"]
    secret, key_uuid = created["secret_key"], created["uuid"]
    assert secret.startswith("sk-ig-") and len(secret) > 40
    assert created["created_at"].endswith("Z") and created["deleted_at"] is None
    assert chat_status(server, secret) == 200

    listing = httpx.get(api, params={"per_page": 200}, headers=server.admin()).json()
    mine = [k for k in listing["api_key_infos"] if k["uuid"] == key_uuid]
    assert mine and mine[0]["secret_key"] is None  # the secret is shown once, never again
    assert listing["meta"]["total"] >= 1 and "pages" in listing["links"]

    renamed = httpx.put(
        f"{api}/{key_uuid}", json={"api_key_uuid": key_uuid, "name": "renamed"}, headers=server.admin()
    ).json()["api_key_info"]
    assert renamed["name"] == "renamed" and renamed["secret_key"] is None
    assert chat_status(server, secret) == 200  # renaming keeps the secret valid

    regenerated = httpx.put(f"{api}/{key_uuid}/regenerate", headers=server.admin()).json()["api_key_info"]
    new_secret = regenerated["secret_key"]
    assert new_secret and new_secret != secret
    assert chat_status(server, secret) == 401  # the very next request with the old secret fails
    assert chat_status(server, new_secret) == 200

    deleted = httpx.delete(f"{api}/{key_uuid}", headers=server.admin()).json()["api_key_info"]
    assert deleted["deleted_at"] is not None
    assert chat_status(server, new_secret) == 401
    assert httpx.delete(f"{api}/{key_uuid}", headers=server.admin()).status_code == 404
    assert httpx.put(f"{api}/{key_uuid}/regenerate", headers=server.admin()).status_code == 404


def test_pagination(server: ServerProcess) -> None:
    api = f"{server.url}/v2/gen-ai/models/api_keys"
    for i in range(5):
        httpx.post(api, json={"name": f"page-{i}"}, headers=server.admin()).raise_for_status()
    first = httpx.get(api, params={"page": 1, "per_page": 2}, headers=server.admin()).json()
    assert len(first["api_key_infos"]) == 2
    assert first["meta"]["pages"] == -(-first["meta"]["total"] // 2)
    assert first["links"]["pages"]["previous"] is None and "page=2" in first["links"]["pages"]["next"]
    second = httpx.get(first["links"]["pages"]["next"], headers=server.admin()).json()
    assert {k["uuid"] for k in second["api_key_infos"]}.isdisjoint(
        {k["uuid"] for k in first["api_key_infos"]}
    )


def test_management_needs_admin_token(server: ServerProcess, key: str) -> None:
    api = f"{server.url}/v2/gen-ai/models/api_keys"
    assert httpx.get(api).status_code == 401
    r = httpx.get(api, headers={"Authorization": f"Bearer {key}"})  # a model key is not an admin token
    assert r.status_code == 401
    assert r.json()["id"] == "unauthorized" and r.json()["error"]["type"] == "authentication_error"


def test_cli_lifecycle_revokes_immediately(server: ServerProcess) -> None:
    created = json.loads(server.cli("keys", "create", "from-cli").stdout)
    assert set(created) >= {"uuid", "name", "secret_key", "created_at"}
    secret, key_uuid = created["secret_key"], created["uuid"]
    assert chat_status(server, secret) == 200  # the running server sees a key the CLI made

    listed = json.loads(server.cli("keys", "list", "--json").stdout)
    assert any(k["uuid"] == key_uuid and k["secret_key"] is None for k in listed)
    assert "from-cli" in server.cli("keys", "list").stdout

    assert json.loads(server.cli("keys", "rename", key_uuid, "cli-renamed").stdout)["name"] == "cli-renamed"
    assert chat_status(server, secret) == 200

    new_secret = json.loads(server.cli("keys", "regenerate", key_uuid).stdout)["secret_key"]
    assert chat_status(server, secret) == 401  # the server cached the old secret; it must not outlive this
    assert chat_status(server, new_secret) == 200

    server.cli("keys", "delete", key_uuid)
    assert chat_status(server, new_secret) == 401
    missing = server.cli("keys", "delete", key_uuid, check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def key_changes(server: ServerProcess, action: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    prefix = f'infergate_key_changes_total{{action="{action}"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_answers_with_a_secret_are_not_stored(server: ServerProcess) -> None:
    api = f"{server.url}/v2/gen-ai/models/api_keys"
    created = httpx.post(api, json={"name": "no-store"}, headers=server.admin())
    assert created.status_code == 200 and created.headers["cache-control"] == "no-store"
    key_uuid = created.json()["api_key_info"]["uuid"]
    regenerated = httpx.put(f"{api}/{key_uuid}/regenerate", headers=server.admin())
    assert regenerated.json()["api_key_info"]["secret_key"]
    assert regenerated.headers["cache-control"] == "no-store"
    pydo = httpx.post(
        api,
        json={"name": "pydo"},
        headers={**server.admin(), "User-Agent": "azsdk-python-pydo/0.44.0 Python/3.11"},
    )
    assert pydo.status_code == 410 and pydo.json()["api_key_info"]["secret_key"]
    assert pydo.headers["cache-control"] == "no-store"


def test_pydo_create_is_logged_and_counted_as_a_create(server: ServerProcess) -> None:
    api = f"{server.url}/v2/gen-ai/models/api_keys"
    before = key_changes(server, "created")
    r = httpx.post(
        api, json={"name": "via-pydo"}, headers={**server.admin(), "User-Agent": "azsdk-python-pydo/0.44.0"}
    )
    assert r.status_code == 410  # what pydo 0.44 accepts (see README, TLS and pydo)
    info = r.json()["api_key_info"]
    assert key_changes(server, "created") == before + 1
    line = f"model access key {info['uuid']} created (request {r.headers['x-request-id']})"
    deadline = time.monotonic() + 10
    while line not in server.log():
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.02)
    assert info["secret_key"] not in server.log()
    rid = r.headers["x-request-id"]
    access = f'"request_id":"{rid}","method":"POST","path":"/v2/gen-ai/models/api_keys","status":200'
    while access not in server.log():  # the access log (and the request metric) count a 200 create
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.02)
    assert chat_status(server, info["secret_key"]) == 200  # the key works: it was a create


@pytest.mark.parametrize("name", ["nul\x00byte", "tab\tname", "new\nline", "esc\x1b[0m", "c1\x85"])
def test_control_characters_in_a_key_name_are_400(server: ServerProcess, name: str) -> None:
    api = f"{server.url}/v2/gen-ai/models/api_keys"
    r = httpx.post(api, json={"name": name}, headers=server.admin())
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["id"] == "bad_request" and body["error"]["param"] == "name"
    assert "control characters" in body["message"] and body["request_id"] == r.headers["x-request-id"]
    key_uuid = server.create_key("to-rename")["uuid"]
    r = httpx.put(f"{api}/{key_uuid}", json={"name": name}, headers=server.admin())
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"


def test_cli_rejects_control_characters_in_a_key_name(server: ServerProcess) -> None:
    result = server.cli("keys", "create", "tab\there", check=False)
    assert result.returncode == 1 and "control characters" in result.stderr


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_key_cache_ttl_must_be_a_number_of_seconds(server: ServerProcess, value: str) -> None:
    env = {**server.env, "INFERGATE_KEY_CACHE_TTL": value}
    result = subprocess.run([INFERGATE, "keys", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "INFERGATE_KEY_CACHE_TTL" in result.stderr
