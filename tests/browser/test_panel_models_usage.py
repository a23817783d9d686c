"""Models page (status, streamed playground, speech, snippets) and usage page (charts, totals, CSV)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.browser.conftest import check_page, login, new_page, screenshot
from tests.support.ledger import rows_where
from tests.support.server import ServerProcess


@pytest.fixture
def page(browser: Any, panel_server: ServerProcess) -> Any:
    page = new_page(browser, panel_server)
    login(page)
    yield page
    page.context.close()


def _playground_key(server: ServerProcess) -> dict[str, Any] | None:
    keys = httpx.get(f"{server.url}/v2/gen-ai/models/api_keys", headers=server.admin()).json()
    return next((k for k in keys["api_key_infos"] if k["name"] == "panel playground"), None)


def test_models_page_shows_catalog_status_and_slots(page: Any, panel_server: ServerProcess) -> None:
    page.goto("/panel/models")
    row = page.locator("#model-status tbody tr").filter(has_text="smollm2-135m-instruct")
    text = row.inner_text()
    assert "chat" in text and "llama_cpp" in text and "free" in text
    assert "loaded" in text
    assert "of 4 slots busy" in text and "queued (max 64)" in text
    check_page(page, "models")
    # the status table refreshes itself (htmx), and a refresh after the session ended goes to login
    with page.expect_response("**/panel/models/status", timeout=15_000) as refresh:
        pass
    assert refresh.value.status == 200 and "smollm2-135m-instruct" in refresh.value.text()
    page.context.clear_cookies()
    page.wait_for_url(f"{panel_server.url}/", timeout=15_000)
    assert page.get_by_label("Admin token").is_visible()


def test_playground_chat_streams_and_is_billed(page: Any, panel_server: ServerProcess) -> None:
    page.goto("/panel/models")
    page.evaluate(
        """() => { window.__changes = 0;
           new MutationObserver(() => window.__changes++).observe(document.getElementById('chat-output'),
             {childList: true, characterData: true, subtree: true}); }"""
    )
    page.get_by_label("Message", exact=True).fill("Count from one to ten.")
    page.get_by_label("Max tokens").fill("40")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "() => document.getElementById('chat-usage').textContent.includes('completion tokens')",
        timeout=120_000,
    )
    answer = page.locator("#chat-output").inner_text()
    assert answer.strip()
    assert page.evaluate("() => window.__changes") >= 2, "the answer arrived in one piece, not streamed"
    screenshot(page, "models-playground-chat")
    key = _playground_key(panel_server)
    assert key is not None  # created on demand, listed like any key
    rows = rows_where(panel_server, f"key_uuid = '{key['uuid']}' AND endpoint = 'chat.completions'")
    assert rows and rows[-1]["status"] == 200 and rows[-1]["output_tokens"] > 0


def test_playground_stop_cancels_and_bills_what_ran(page: Any, panel_server: ServerProcess) -> None:
    page.goto("/panel/models")
    page.get_by_label("Message", exact=True).fill("Write a very long story about a lighthouse keeper.")
    page.get_by_label("Max tokens").fill("2000")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "() => document.getElementById('chat-output').textContent.length > 0", timeout=120_000
    )
    page.get_by_role("button", name="Stop").click()
    page.wait_for_function("() => document.getElementById('chat-usage').textContent === 'Stopped.'")
    key = _playground_key(panel_server)
    assert key is not None
    rows = rows_where(panel_server, f"key_uuid = '{key['uuid']}' AND status = 499")
    assert len(rows) == 1, "the stopped request is billed once, as client gone"
    assert 0 < rows[0]["output_tokens"] < 2000


def test_playground_speech_tab(page: Any, panel_server: ServerProcess) -> None:
    page.goto("/panel/models")
    tab = page.get_by_role("tab", name="Text to speech")
    if tab.count() == 0:
        pytest.fail("no tts model is servable: the speech extra (espeak-tts) should be installed")
    tab.click()
    panel = page.get_by_role("tabpanel", name="Text to speech")
    panel.get_by_label("Model").select_option("espeak-tts")
    panel.get_by_label("Text").fill("Hello from the panel.")
    page.get_by_role("button", name="Speak").click()
    page.wait_for_function("() => document.getElementById('speech-status').textContent.startsWith('Ready')")
    assert page.locator("#speech-audio").is_visible()
    duration = page.evaluate(
        """() => new Promise(ok => { const a = document.getElementById('speech-audio');
             if (a.readyState >= 1) ok(a.duration); else a.onloadedmetadata = () => ok(a.duration); })"""
    )
    assert duration > 0.3
    # the code examples follow the tab and its model: audio.speech for espeak-tts
    shown = page.locator(".snippet-set:visible")
    assert shown.get_attribute("data-tab") == "speech"
    text = shown.inner_text()
    assert f"curl {panel_server.url}/v1/audio/speech" in text and "client.audio.speech.create(" in text
    assert 'model="espeak-tts"' in text and "chat/completions" not in text
    check_page(page, "models-playground-speech")


def test_snippets_carry_base_url_and_model(page: Any, panel_server: ServerProcess) -> None:
    page.goto("/panel/models")
    snippets = page.locator('.snippet-set[data-tab="chat"] .snippet pre')
    assert snippets.count() == 4 and page.locator(".snippet-set:visible").get_attribute("data-tab") == "chat"
    titles = page.locator('.snippet-set[data-tab="chat"] .snippet figcaption span').all_inner_texts()
    assert titles == ["curl", "openai SDK", "gradient SDK", "pydo"]
    for text in snippets.all_inner_texts()[:3]:
        assert panel_server.url in text and "smollm2-135m-instruct" in text
    # pydo refuses plain HTTP: its example names an https:// endpoint and says how to serve one
    pydo = snippets.nth(3).inner_text()
    https = panel_server.url.replace("http://", "https://").rsplit(":", 1)[0] + ":8443"
    assert f'endpoint="{https}"' in pydo and "--tls-cert" in pydo and "smollm2-135m-instruct" in pydo
    assert "http://" not in pydo
    assert f'base_url="{panel_server.url}/v1/"' in snippets.nth(1).inner_text()
    assert f'Gradient(model_access_key=os.environ["MODEL_ACCESS_KEY"], base_url="{panel_server.url}")' in (
        snippets.nth(2).inner_text()
    )


def _api_usage(server: ServerProcess, start: str, end: str, group_by: str) -> dict[str, Any]:
    return httpx.get(
        f"{server.url}/v2/gen-ai/usage",
        params={"start": start, "end": end, "group_by": group_by},
        headers=server.admin(),
    ).json()


def test_usage_page_charts_totals_and_csv_agree_with_the_api(page: Any, panel_server: ServerProcess) -> None:
    secret = panel_server.create_key("usage-key")["secret_key"]
    r = httpx.post(
        f"{panel_server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 8,
        },
        timeout=120,
    )
    assert r.status_code == 200
    today = datetime.now(UTC).date()
    start, end = (today - timedelta(days=6)).isoformat(), today.isoformat()
    page.goto(f"/panel/usage?start={start}&end={end}")
    for chart in ("chart-day-tokens", "chart-day-cost", "chart-models", "chart-keys"):
        page.wait_for_selector(f"#{chart} canvas")
    api = _api_usage(panel_server, start, (today + timedelta(days=1)).isoformat(), "model")
    totals = page.locator("#totals tbody td").all_inner_texts()
    assert int(totals[0]) == api["totals"]["requests"]
    assert int(totals[3]) == api["totals"]["output_tokens"]
    model_rows = page.locator("#table-model tbody tr").all_inner_texts()
    assert any("smollm2-135m-instruct" in row for row in model_rows)
    key_rows = page.locator("#table-key tbody th").all_inner_texts()
    assert "usage-key" in key_rows
    check_page(page, "usage")

    with page.expect_download() as download:
        page.get_by_role("link", name="per model").click()
    content = open(download.value.path(), encoding="utf-8").read()  # noqa: SIM115
    rows = list(csv.DictReader(io.StringIO(content)))
    assert rows[-1]["model"] == "TOTAL"
    assert int(rows[-1]["requests"]) == api["totals"]["requests"]
    assert int(rows[-1]["cache_read_tokens"]) == api["totals"]["cache_read_tokens"]
    assert round(float(rows[-1]["cost_usd"]) * 1e9) == api["totals"]["cost_nano_usd"]
    by_model = {row["model"]: row for row in rows[:-1]}
    for item in api["usage"]:
        assert int(by_model[item["group"]]["output_tokens"]) == item["output_tokens"]


def test_usage_page_rejects_a_bad_range(page: Any) -> None:
    response = page.goto("/panel/usage?start=2026-05-01&end=2026-04-01")
    assert response.status == 400
    assert "start date must not be after" in page.get_by_role("alert").inner_text()
    response = page.goto("/panel/usage?start=yesterday")
    assert response.status == 400
    response = page.goto("/panel/usage?start=1969-12-31&end=2026-01-01")
    assert response.status == 400 and "between 1970-01-01" in page.get_by_role("alert").inner_text()
    response = page.goto("/panel/usage.csv?start=2026-01-01&end=9999-12-31")
    assert response.status == 400
    response = page.goto("/panel/usage?start=1970-01-01&end=9999-12-30")  # the widest range works
    assert response.status == 200
