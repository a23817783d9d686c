"""Jobs page (status, tags, timings, audio output) and stored responses with their chain."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.browser.conftest import check_page, login, new_page
from tests.support.server import ServerProcess


@pytest.fixture
def page(browser: Any, panel_server: ServerProcess) -> Any:
    page = new_page(browser, panel_server)
    login(page)
    yield page
    page.context.close()


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _wait_done(server: ServerProcess, secret: str, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{server.url}/v1/async-invoke/{job_id}/status", headers=_auth(secret), timeout=10)
        if r.json()["status"] in ("COMPLETED", "FAILED"):
            assert r.json()["status"] == "COMPLETED", r.text
            return
        assert time.monotonic() < deadline, f"job {job_id} still {r.json()['status']}"
        time.sleep(0.05)


def test_jobs_page_shows_status_tags_timings_and_audio(page: Any, panel_server: ServerProcess) -> None:
    secret = panel_server.create_key("jobs-key")["secret_key"]
    r = httpx.post(
        f"{panel_server.url}/v1/async-invoke",
        headers=_auth(secret),
        json={
            "model_id": "espeak-tts",
            "input": {"text": "A job for the panel."},
            "tags": [{"key": "team", "value": "ops"}],
        },
        timeout=30,
    )
    assert r.status_code in (200, 202), r.text
    job_id = r.json()["request_id"]
    _wait_done(panel_server, secret, job_id)
    page.goto("/panel/jobs")
    row = page.locator("table.jobs tbody tr").filter(has_text=job_id)
    text = row.inner_text()
    assert "COMPLETED" in text and "team=ops" in text and "espeak-tts" in text and "jobs-key" in text
    assert text.count(" s") >= 2  # waited and ran, in seconds
    audio = row.locator("audio")
    src = audio.get_attribute("src")
    assert "/media/" in src
    assert page.context.request.get(src).status == 200  # the signed URL plays
    page.goto("/panel/jobs?status=FAILED")
    assert page.locator("table.jobs tbody tr").filter(has_text=job_id).count() == 0
    page.goto("/panel/jobs")
    check_page(page, "jobs")


def test_stored_responses_with_their_chain(page: Any, panel_server: ServerProcess) -> None:
    secret = panel_server.create_key("responses-key")["secret_key"]

    def ask(text: str, previous: str | None = None) -> str:
        body: dict[str, Any] = {"model": "smollm2-135m-instruct", "input": text, "max_output_tokens": 8}
        if previous:
            body["previous_response_id"] = previous
        r = httpx.post(f"{panel_server.url}/v1/responses", headers=_auth(secret), json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    first = ask("My name is Ada.")
    second = ask("What is my name?", first)
    page.goto("/panel/responses")
    assert page.get_by_role("link", name=second).count() == 1
    row = page.locator("tbody tr").filter(has=page.get_by_role("link", name=second))
    assert "responses-key" in row.inner_text() and "smollm2-135m-instruct" in row.inner_text()
    check_page(page, "responses")
    page.get_by_role("link", name=second).click()
    chain = page.locator("ol.chain > li")
    assert chain.count() == 2
    assert first in chain.nth(0).inner_text() and "My name is Ada." in chain.nth(0).inner_text()
    assert "What is my name?" in chain.nth(1).inner_text()
    check_page(page, "response-chain")


def test_responses_paging_wide_output_and_deleted_chain_links(page: Any, panel_server: ServerProcess) -> None:
    secret = panel_server.create_key("paging-key")["secret_key"]

    def ask(text: str, previous: str | None = None) -> str:
        body: dict[str, Any] = {"model": "smollm2-135m-instruct", "input": text, "max_output_tokens": 8}
        if previous:
            body["previous_response_id"] = previous
        r = httpx.post(f"{panel_server.url}/v1/responses", headers=_auth(secret), json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    first = ask("Remember the number 7.")
    second = ask("And the number 8.", first)
    third = ask("Which numbers?", second)
    r = httpx.delete(f"{panel_server.url}/v1/responses/{second}", headers=_auth(secret), timeout=30)
    assert r.status_code == 200, r.text

    # one a page: newest first, then older ones through the cursor (the deleted one is gone)
    page.goto("/panel/responses?limit=1")
    rows = page.locator("table.responses tbody tr")
    assert rows.count() == 1 and third in rows.first.inner_text()
    chain_cell = rows.first.locator("td").nth(4)
    assert "deleted" in chain_cell.inner_text() and chain_cell.get_by_role("link").count() == 0
    output = rows.first.locator("td.output-text")
    assert output.bounding_box()["width"] >= 250, "the Output column is squeezed"
    check_page(page, "responses-paged")
    page.get_by_role("link", name="Older responses").click()
    page.wait_for_url(f"**after={third}")
    rows = page.locator("table.responses tbody tr")
    assert rows.count() == 1 and first in rows.first.inner_text()
    page.get_by_role("link", name="Newest").click()
    page.wait_for_url("**/panel/responses?limit=1")
    assert third in page.locator("table.responses tbody tr").first.inner_text()
    # the chain of the last turn stops where a turn was deleted, and says so
    page.goto(f"/panel/responses/{third}")
    assert page.locator("ol.chain > li").count() == 1
    assert "deleted or expired" in page.locator("main").inner_text()
    assert page.locator(f'a[href="/panel/responses/{second}"]').count() == 0
