"""Per-key limits through a real server (in-process limiter): the PUT/GET contract, the CLI, a budget
raced by 50 concurrent requests, the concurrency limit, and OpenAI's x-ratelimit-* headers."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream

LIMITS = "/v2/gen-ai/models/api_keys/{}/limits"
# 0.001 USD per output token, nothing per input token: a request with max_tokens 7 reserves exactly
# 0.007 USD and the stand-in answers exactly 7 tokens, so a budget of 0.07 USD allows exactly 10.
COST_NANO = 7_000_000
BUDGET_USD = 0.07
NO_LIMITS = {"rpm": None, "tpm": None, "max_concurrency": None, "monthly_budget_usd": None}


def limits_catalog(base_url: str) -> str:
    text = "builtins = false\n"
    for model_id, upstream, prices in (
        ("priced", "standin", "input_price = 0.0\noutput_price = 1000.0"),
        ("priced-slowstream", "slowstream", "input_price = 0.0\noutput_price = 1000.0"),
        ("priced-input", "standin", "input_price = 1.0\noutput_price = 2.0"),
        ("priced-fail", "fail-500", "input_price = 1.0\noutput_price = 2.0"),
    ):
        text += (
            f'\n[[models]]\nid = "{model_id}"\nbackend = "openai"\nbase_url = "{base_url}"\n'
            f'upstream_model = "{upstream}"\n{prices}\n'
        )
    return text


@pytest.fixture(scope="module")
def limited(upstream: StandInUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("limits"), limits_catalog(upstream.base_url)).start()
    yield proc
    proc.stop()


def put_limits(server: ServerProcess, key_uuid: str, body: Any) -> httpx.Response:
    return httpx.put(server.url + LIMITS.format(key_uuid), json=body, headers=server.admin(), timeout=30)


def get_limits(server: ServerProcess, key_uuid: str) -> httpx.Response:
    return httpx.get(server.url + LIMITS.format(key_uuid), headers=server.admin(), timeout=30)


def chat_body(model: str = "priced", max_tokens: int = 7, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        **extra,
    }


def chat(url: str, secret: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json=chat_body(**body),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )


async def fire(urls: list[str], secret: str, n: int, **body: Any) -> list[httpx.Response]:
    """n chat requests at once, spread over the servers' urls."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{urls[i % len(urls)]}/v1/chat/completions",
                    json=chat_body(**body),
                    headers={"Authorization": f"Bearer {secret}"},
                )
                for i in range(n)
            )
        )


def _rows(db: Path, key_uuid: str) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM usage_records WHERE key_uuid = ?", (key_uuid,))]


def ledger_rows(
    db: Path, key_uuid: str, servers: list[ServerProcess], timeout: float = 15
) -> list[dict[str, Any]]:
    """Every ledger row of the key, once each server has flushed what it billed so far: a request of
    a fresh key, sent to each server after the others ended, is written after them (one writer, in order)."""
    for server in servers:
        barrier = server.create_key("barrier")
        assert chat(server.url, barrier["secret_key"], model="priced-input").status_code == 200
        deadline = time.monotonic() + timeout
        while not _rows(db, barrier["uuid"]):
            assert time.monotonic() < deadline, "the ledger was not flushed"
            time.sleep(0.05)
    return _rows(db, key_uuid)


def assert_budget_race(responses: list[httpx.Response], rows: list[dict[str, Any]]) -> None:
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) == 10, ([r.status_code for r in responses], refused[0].text if refused else None)
    assert len(refused) == 40, [r.text for r in responses if r.status_code not in (200, 429)][:3]
    for r in refused:
        error = r.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "insufficient_quota"
        assert "monthly budget of $0.07" in error["message"]
        assert int(r.headers["retry-after"]) >= 1
    assert len(rows) == 10 and all(row["status"] == 200 for row in rows)
    assert sum(row["cost_nano_usd"] for row in rows) == 10 * COST_NANO <= BUDGET_USD * 1e9


# -- the contract ----------------------------------------------------------------------------------
def test_put_and_get_limits(limited: ServerProcess) -> None:
    key = limited.create_key("contract")
    r = get_limits(limited, key["uuid"])
    assert r.status_code == 200
    assert r.json() == {"limits": NO_LIMITS, "usage": {"month_cost_usd": 0.0, "reserved_usd": 0.0}}
    body = {"rpm": 100, "tpm": 50_000, "max_concurrency": 4, "monthly_budget_usd": 12.5}
    r = put_limits(limited, key["uuid"], body)
    assert r.status_code == 200 and r.json()["limits"] == body
    assert r.json()["usage"] == {"month_cost_usd": 0.0, "reserved_usd": 0.0}
    assert get_limits(limited, key["uuid"]).json()["limits"] == body
    # a field left out is null, as PUT replaces the whole set
    assert put_limits(limited, key["uuid"], {"rpm": 7}).json()["limits"] == {**NO_LIMITS, "rpm": 7}
    assert put_limits(limited, key["uuid"], NO_LIMITS).json()["limits"] == NO_LIMITS
    assert get_limits(limited, key["uuid"]).json()["limits"] == NO_LIMITS


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm": 0}, "rpm"),
        ({"rpm": "5"}, "rpm"),
        ({"rpm": True}, "rpm"),
        ({"tpm": 1.5}, "tpm"),
        ({"max_concurrency": -1}, "max_concurrency"),
        ({"max_concurrency": 10**12}, "max_concurrency"),
        ({"monthly_budget_usd": -1}, "monthly_budget_usd"),
        ({"monthly_budget_usd": "ten"}, "monthly_budget_usd"),
        ({"monthly_budget_usd": 1e300}, "monthly_budget_usd"),
        ({"rpm": 5, "burst": 3}, "burst"),
    ],
)
def test_bad_limits_are_400_naming_the_field(
    limited: ServerProcess, body: dict[str, Any], param: str
) -> None:
    key = limited.create_key("bad")
    r = put_limits(limited, key["uuid"], body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(param)
    assert get_limits(limited, key["uuid"]).json()["limits"] == NO_LIMITS  # nothing was stored


def test_limits_of_unknown_keys_and_without_the_admin_token(limited: ServerProcess) -> None:
    for method in (get_limits, lambda s, u: put_limits(s, u, {"rpm": 5})):
        r = method(limited, "00000000-0000-0000-0000-000000000000")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    key = limited.create_key("gone")
    assert httpx.delete(f"{limited.url}/v2/gen-ai/models/api_keys/{key['uuid']}", headers=limited.admin())
    assert put_limits(limited, key["uuid"], {"rpm": 5}).status_code == 404
    other = limited.create_key("other")
    for headers in ({}, {"Authorization": f"Bearer {other['secret_key']}"}):
        r = httpx.put(limited.url + LIMITS.format(other["uuid"]), json={"rpm": 1}, headers=headers)
        assert r.status_code == 401
    for raw in (b"not json", b"[1, 2]"):
        r = httpx.put(limited.url + LIMITS.format(other["uuid"]), content=raw, headers=limited.admin())
        assert r.status_code == 400


def test_cli_sets_what_it_is_told_and_the_server_applies_it(limited: ServerProcess) -> None:
    key = limited.create_key("cli")
    uuid = key["uuid"]
    out = limited.cli("keys", "limits", uuid, "--rpm", "1", "--budget", "1.5").stdout
    import json

    assert json.loads(out) == {
        "limits": {**NO_LIMITS, "rpm": 1, "monthly_budget_usd": 1.5},
        "usage": {"month_cost_usd": 0.0, "reserved_usd": 0.0},
    }
    assert get_limits(limited, uuid).json()["limits"] == {**NO_LIMITS, "rpm": 1, "monthly_budget_usd": 1.5}
    # the running server applies it at once (the CLI announces the change like any key change)
    assert chat(limited.url, key["secret_key"]).status_code == 200
    refused = chat(limited.url, key["secret_key"])
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    out = json.loads(limited.cli("keys", "limits", uuid, "--tpm", "1000", "--concurrency", "3").stdout)
    assert out["limits"] == {"rpm": 1, "tpm": 1000, "max_concurrency": 3, "monthly_budget_usd": 1.5}
    assert out["usage"]["month_cost_usd"] == pytest.approx(0.007)  # the one request above
    out = json.loads(limited.cli("keys", "limits", uuid, "--rpm", "none").stdout)
    assert out["limits"]["rpm"] is None and out["limits"]["tpm"] == 1000
    assert json.loads(limited.cli("keys", "limits", uuid).stdout)["limits"] == out["limits"]  # only shows
    assert json.loads(limited.cli("keys", "limits", uuid, "--clear").stdout)["limits"] == NO_LIMITS
    bad = limited.cli("keys", "limits", uuid, "--rpm", "0", check=False)
    assert bad.returncode == 1 and "--rpm" in bad.stderr
    unknown = limited.cli("keys", "limits", "no-such-key", "--rpm", "5", check=False)
    assert unknown.returncode == 1 and "not found" in unknown.stderr


# -- enforcement -------------------------------------------------------------------------------------
def test_fifty_concurrent_requests_on_a_budget_for_ten(limited: ServerProcess) -> None:
    key = limited.create_key("race")
    assert put_limits(limited, key["uuid"], {"monthly_budget_usd": BUDGET_USD}).status_code == 200
    responses = asyncio.run(fire([limited.url], key["secret_key"], 50))
    later = chat(limited.url, key["secret_key"])  # all spent: only next month helps
    assert later.status_code == 429 and int(later.headers["retry-after"]) > 60
    assert_budget_race(responses, ledger_rows(limited.data_dir / "infergate.db", key["uuid"], [limited]))
    usage = get_limits(limited, key["uuid"]).json()["usage"]
    assert usage == {"month_cost_usd": pytest.approx(BUDGET_USD), "reserved_usd": 0.0}


def test_concurrency_limit_frees_a_slot_when_a_request_ends(limited: ServerProcess) -> None:
    key = limited.create_key("concurrency")
    secret = key["secret_key"]
    assert put_limits(limited, key["uuid"], {"max_concurrency": 2}).status_code == 200
    body = chat_body("priced-slowstream", stream=True)
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(timeout=60) as client, contextlib.ExitStack() as streams:
        opened = []
        for _ in range(2):  # two streams in flight: both admitted, their first event received
            response = streams.enter_context(
                client.stream("POST", f"{limited.url}/v1/chat/completions", json=body, headers=headers)
            )
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: a dropped iterator closes the connection
            assert next(lines).startswith("data: ")
            opened.append((response, lines))
        third = chat(limited.url, secret)
        assert third.status_code == 429
        assert "at most 2 at a time" in third.json()["error"]["message"]
        assert third.headers["retry-after"] == "1"
        assert get_limits(limited, key["uuid"]).json()["usage"]["reserved_usd"] == 0.0  # no budget: no cost
        opened[0][0].close()  # one client leaves: its slot comes back, the other stream still holds one
        deadline = time.monotonic() + 15
        while (r := chat(limited.url, secret)).status_code != 200:
            assert r.status_code == 429 and time.monotonic() < deadline, r.text
            time.sleep(0.05)


def test_ratelimit_headers_on_every_answer_of_a_limited_key(limited: ServerProcess) -> None:
    key = limited.create_key("headers")
    secret = key["secret_key"]
    assert put_limits(limited, key["uuid"], {"rpm": 10, "tpm": 100_000}).status_code == 200
    client = openai.OpenAI(base_url=f"{limited.url}/v1/", api_key=secret, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="priced-input", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    h = raw.headers
    assert raw.parse().choices[0].message.content
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("10", "9")
    assert h["x-ratelimit-reset-requests"].endswith("s")
    assert h["x-ratelimit-limit-tokens"] == "100000"
    assert 99_900 < int(h["x-ratelimit-remaining-tokens"]) < 100_000
    assert h["x-ratelimit-reset-tokens"].endswith("s")
    # a stream carries them too
    with httpx.stream(
        "POST",
        f"{limited.url}/v1/chat/completions",
        json=chat_body("priced-input", 5, stream=True),
        headers={"Authorization": f"Bearer {secret}"},
    ) as stream:
        assert stream.status_code == 200 and stream.headers["x-ratelimit-remaining-requests"] in ("8", "9")
        assert "[DONE]" in stream.read().decode()
    # so does an upstream failure after admission
    failed = chat(limited.url, secret, model="priced-fail")
    assert failed.status_code == 502 and failed.headers["x-ratelimit-limit-requests"] == "10"
    # and a refusal: an impossible request (more tokens than the tpm) names max_tokens
    too_big = chat(limited.url, secret, model="priced-input", max_tokens=200_000)
    assert too_big.status_code == 429 and too_big.json()["error"]["param"] == "max_tokens"
    assert too_big.headers["x-ratelimit-limit-tokens"] == "100000" and "retry-after" in too_big.headers
    # a key without limits gets none of them
    free = chat(limited.url, limited.create_key("free")["secret_key"])
    assert free.status_code == 200 and not any(h.startswith("x-ratelimit") for h in free.headers)
