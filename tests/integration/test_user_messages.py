"""Messages a person reads: `infergate keys limits` option errors name the option and the CLI's
own words (no internal function names, `none` rather than the API's `null`), and a model access
key on the management API is told it needs the admin token (not that the server lacks one)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from infergate.auth import check_admin
from infergate.errors import AuthenticationFailed
from tests.support.server import ServerProcess

LIMITS = "/v2/gen-ai/models/api_keys/{}/limits"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("messages"), "builtins = false\n").start()
    yield proc
    proc.stop()


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--rpm", "abc", "argument --rpm: expected a whole number or 'none', got 'abc'"),
        ("--tpm", "1.5", "argument --tpm: expected a whole number or 'none', got '1.5'"),
        ("--concurrency", "many", "argument --concurrency: expected a whole number or 'none', got 'many'"),
        ("--budget", "ten", "argument --budget: expected an amount in USD or 'none', got 'ten'"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_option_in_plain_words(
    server: ServerProcess, option: str, value: str, expected: str
) -> None:
    key = server.create_key("cli-types")
    bad = server.cli("keys", "limits", key["uuid"], option, value, check=False)
    assert bad.returncode == 2, bad.stderr
    assert expected in bad.stderr
    assert "_count" not in bad.stderr and "_usd" not in bad.stderr


def test_an_out_of_range_value_says_none_not_null(server: ServerProcess) -> None:
    key = server.create_key("cli-range")
    bad = server.cli("keys", "limits", key["uuid"], "--rpm", "0", check=False)
    assert bad.returncode == 1, bad.stderr
    assert "--rpm: must be between 1 and" in bad.stderr
    assert "or none for no limit" in bad.stderr and "null" not in bad.stderr
    bad = server.cli("keys", "limits", key["uuid"], "--budget", "-1", check=False)
    assert bad.returncode == 1 and "--budget:" in bad.stderr and "null" not in bad.stderr


def test_a_model_access_key_on_the_management_api_is_told_it_needs_the_admin_token(
    server: ServerProcess,
) -> None:
    key = server.create_key("not-admin")
    r = httpx.get(
        server.url + LIMITS.format(key["uuid"]), headers={"Authorization": f"Bearer {key['secret_key']}"}
    )
    assert r.status_code == 401
    message = r.json()["error"]["message"]
    assert "this endpoint needs the admin token (INFERGATE_ADMIN_TOKEN)" in message
    assert "a model access key is not accepted here" in message


def test_without_an_admin_token_configured_the_message_says_so() -> None:
    with pytest.raises(AuthenticationFailed) as info:
        check_admin("Bearer anything", None)
    assert "closed until the server is started with INFERGATE_ADMIN_TOKEN" in info.value.message
    with pytest.raises(AuthenticationFailed) as info:
        check_admin("Bearer wrong", "right")
    assert "needs the admin token" in info.value.message
    check_admin("Bearer right", "right")  # the admin token itself passes
