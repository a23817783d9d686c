"""The playground's text-to-image tab, against an image model served through a local stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
