"""The playground's text-to-image tab, against an image model served through a local stand-in."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser.conftest import check_page, login, new_page
from tests.support.images_upstream import ImagesUpstream
from tests.support.ledger import rows_where
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    upstream = ImagesUpstream().start()
    catalog = (
        'builtins = false\n[[models]]\nid = "painter"\nkind = "image"\nbackend = "openai"\n'
        f'base_url = "{upstream.base_url}"\nupstream_model = "img"\ninput_price = 5.0\noutput_price = 40.0\n'
    )
    proc = ServerProcess(tmp_path_factory.mktemp("panel-images"), catalog).start()
    yield proc
    proc.stop()
    upstream.stop()


def test_image_tab_generates_and_bills_the_playground_key(browser: Any, server: ServerProcess) -> None:
    page = new_page(browser, server)
    try:
        login(page)
        page.goto("/panel/models")
        assert page.get_by_role("tab", name="Text to speech").count() == 0  # no tts model here
        page.get_by_role("tab", name="Text to image").click()
        panel = page.get_by_role("tabpanel", name="Text to image")
        panel.get_by_label("Prompt").fill("A red square")
        panel.get_by_role("button", name="Generate").click()
        page.wait_for_function("() => document.getElementById('image-status').textContent === 'Done.'")
        size = page.evaluate("() => document.getElementById('image-result').naturalWidth")
        assert size > 0
        check_page(page, "models-playground-image")
        rows = rows_where(server, "model = 'painter' AND endpoint LIKE 'images%'")
        assert len(rows) == 1 and rows[0]["status"] == 200
        page.goto("/panel/keys")
        assert page.get_by_role("rowheader", name="panel playground playground").count() == 1
    finally:
        page.context.close()


def test_jobs_page_shows_image_thumbnails(browser: Any, server: ServerProcess) -> None:
    secret = server.create_key("image-jobs")["secret_key"]
    auth = {"Authorization": f"Bearer {secret}"}
    r = httpx.post(
        f"{server.url}/v1/async-invoke",
        headers=auth,
        json={"model_id": "painter", "input": {"prompt": "A blue circle", "num_images": 2}},
        timeout=30,
    )
    assert r.status_code in (200, 202), r.text
    job_id = r.json()["request_id"]
    deadline = time.monotonic() + 60
    while (status := httpx.get(f"{server.url}/v1/async-invoke/{job_id}/status", headers=auth).json())[
        "status"
    ] not in ("COMPLETED", "FAILED"):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["status"] == "COMPLETED", status
    page = new_page(browser, server)
    try:
        login(page)
        page.goto("/panel/jobs")
        thumbs = page.locator("table.jobs tbody tr").filter(has_text=job_id).locator("img.thumb")
        assert thumbs.count() == 2
        for i in range(2):
            thumbs.nth(i).scroll_into_view_if_needed()
            page.wait_for_function(
                "(img) => img.complete && img.naturalWidth > 0", arg=thumbs.nth(i).element_handle()
            )
        check_page(page, "jobs-images")
    finally:
        page.context.close()
