"""Budgets hold for what is priced per unit (images), not only per token: a key whose budget
buys exactly 3 images gets exactly 3 of 12 concurrent image requests, and the ledger and the
limits API agree on the spend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.images_upstream import ImagesUpstream
from tests.support.ledger import rows_where
from tests.support.server import ServerProcess

IMAGE_PRICE = 0.04  # USD per image; tokens are free here, so the budget is spent on images alone


@pytest.fixture(scope="module")
def stand_in() -> Iterator[ImagesUpstream]:
    upstream = ImagesUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def server(stand_in: ImagesUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    catalog = (
        f'builtins = false\n\n[[models]]\nid = "priced-images"\nkind = "image"\nbackend = "openai"\n'
        f'base_url = "{stand_in.base_url}"\nupstream_model = "img"\nimage_price = {IMAGE_PRICE}\n'
    )
    proc = ServerProcess(tmp_path_factory.mktemp("unit-budget"), catalog).start()
    yield proc
    proc.stop()


def test_a_budget_for_three_images_admits_exactly_three(server: ServerProcess) -> None:
    key = server.create_key("three-images")
    limits = httpx.put(
        f"{server.url}/v2/gen-ai/models/api_keys/{key['uuid']}/limits",
        json={"rpm": None, "tpm": None, "max_concurrency": None, "monthly_budget_usd": 3 * IMAGE_PRICE},
        headers=server.admin(),
    )
    assert limits.status_code == 200, limits.text

    def generate(_: int) -> int:
        r = httpx.post(
            f"{server.url}/v1/images/generations",
            json={"model": "priced-images", "prompt": "a lighthouse", "n": 1, "size": "256x256"},
            headers={"Authorization": f"Bearer {key['secret_key']}"},
            timeout=60,
        )
        assert r.status_code in (200, 429), r.text
        return r.status_code

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(generate, range(12)))
    assert statuses.count(200) == 3, statuses

    deadline = time.monotonic() + 10
    while len(rows := rows_where(server, f"key_uuid = '{key['uuid']}'")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [row["status"] for row in rows] == [200, 200, 200]  # the refused ones did no work: no row
    spent = sum(row["cost_nano_usd"] for row in rows)
    assert spent == 3 * int(IMAGE_PRICE * 1e9)
    usage = httpx.get(
        f"{server.url}/v2/gen-ai/models/api_keys/{key['uuid']}/limits", headers=server.admin()
    ).json()["usage"]
    assert usage["month_cost_usd"] == pytest.approx(3 * IMAGE_PRICE) and usage["reserved_usd"] == 0
