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
def upstream() -> Iterator[ImagesUpstream]:
    stand_in = ImagesUpstream().start()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: ImagesUpstream) -> Iterator[ServerProcess]:
    catalog = (
        'builtins = false\n[[models]]\nid = "painter"\nkind = "image"\nbackend = "openai"\n'
        f'base_url = "{upstream.base_url}"\nupstream_model = "img"\ninput_price = 5.0\noutput_price = 40.0\n'
        'image_price = 0.04\naliases = ["painter-v1"]\nsizes = ["768x512"]\n'
        '[[models]]\nid = "sketcher"\nkind = "image"\nbackend = "openai"\n'
        f'base_url = "{upstream.base_url}"\nupstream_model = "img"\n'
        'sizes = ["640x384"]\ndefault_size = "640x384"\n'
        "audio_second_price = 0.002\n"
    )
    proc = ServerProcess(tmp_path_factory.mktemp("panel-images"), catalog).start()
    yield proc
    proc.stop()


def test_models_table_shows_per_image_prices_and_aliases(browser: Any, server: ServerProcess) -> None:
    page = new_page(browser, server)
    try:
        login(page)
        page.goto("/panel/models")
        painter = page.locator("#model-status tbody tr").filter(has_text="painter").first.inner_text()
        assert "$0.04 / image" in painter and "also: painter-v1" in painter
        sketcher = page.locator("#model-status tbody tr").filter(has_text="sketcher").inner_text()
        assert "$0.002 / second of audio" in sketcher and "/ image" not in sketcher
    finally:
        page.context.close()


def test_image_snippets_and_sizes_follow_the_tab_and_model(
    browser: Any, server: ServerProcess, upstream: ImagesUpstream
) -> None:
    page = new_page(browser, server)
    try:
        login(page)
        page.goto("/panel/models")
        # no chat model here, so the image tab opens first; the examples follow the tabs
        assert "/v1/images/generations" in page.locator(".snippet-set:visible").inner_text()
        page.get_by_role("tab", name="Chat").click()
        assert "/v1/chat/completions" in page.locator(".snippet-set:visible").inner_text()
        page.get_by_role("tab", name="Text to image").click()
        shown = page.locator(".snippet-set:visible")
        text = shown.inner_text()
        assert f"curl {server.url}/v1/images/generations" in text and "client.images.generate(" in text
        assert '"model": "painter"' in text and 'model="painter"' in text
        assert "chat/completions" not in text
        panel = page.get_by_role("tabpanel", name="Text to image")
        size = panel.get_by_label("Size")
        assert size.locator("option").all_inner_texts() == ["256x256", "512x512", "1024x1024", "768x512"]
        assert size.input_value() == "768x512"  # no default_size: its first catalog size, as the API does
        panel.get_by_label("Model").select_option("sketcher")  # its own sizes and default; snippets follow
        assert size.locator("option").all_inner_texts() == ["256x256", "512x512", "1024x1024", "640x384"]
        assert size.input_value() == "640x384"
        assert '"model": "sketcher"' in shown.inner_text() and '"painter"' not in shown.inner_text()
        panel.get_by_label("Model").select_option("painter")
        size.select_option("512x512")
        panel.get_by_label("Prompt").fill("A wide red square")
        sent = len(upstream.requests)
        panel.get_by_role("button", name="Generate").click()
        page.wait_for_function("() => document.getElementById('image-status').textContent === 'Done.'")
        assert upstream.requests[sent]["size"] == "512x512"
        check_page(page, "models-image-snippets")
    finally:
        page.context.close()


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
        assert len(rows) >= 1 and rows[0]["status"] == 200
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
