"""Panel sessions and CSRF in Chromium: forged posts refused, expired cookies, rate-limited login."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infergate.web import session
from tests.browser.conftest import check_page, login, new_page, screenshot
from tests.support.server import ADMIN_TOKEN, ServerProcess, free_port

EMPTY_CATALOG = "builtins = false\n"  # no model to load: these servers only serve the panel
# one model that cannot load: the models page must say it is failing, and why
BROKEN_CATALOG = (
    EMPTY_CATALOG + '[[models]]\nid = "broken-gguf"\nbackend = "llama_cpp"\npath = "missing.gguf"\n'
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("panel-sec"), BROKEN_CATALOG).start()
    yield proc
    proc.stop()


@pytest.fixture
def page(browser: Any, server: ServerProcess) -> Any:
    page = new_page(browser, server)
    yield page
    page.context.close()


@pytest.fixture
def evil_site(tmp_path: Path, server: ServerProcess) -> Iterator[str]:
    """Another origin serving a page that auto-submits a form to the panel."""
    (tmp_path / "index.html").write_text(
        f"""<!doctype html><html><body>
        <form id="f" method="post" action="{server.url}/panel/keys">
          <input name="name" value="forged-key"><input name="csrf_token" value="guess">
        </form>
        <script>document.getElementById('f').submit()</script></body></html>"""
    )
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://localhost:{httpd.server_address[1]}/index.html"
    httpd.shutdown()


def _key_names(server: ServerProcess) -> list[str]:
    r = httpx.get(f"{server.url}/v2/gen-ai/models/api_keys", headers=server.admin())
    return [k["name"] for k in r.json()["api_key_infos"]]


def test_forged_cross_site_form_post_is_refused(page: Any, server: ServerProcess, evil_site: str) -> None:
    login(page)  # the victim is logged in, in the same browser
    page.goto(evil_site)
    page.wait_for_load_state("load")
    screenshot(page, "csrf-forged-post")
    assert "forged-key" not in _key_names(server)
    assert page.get_by_text("Request refused").count() + page.get_by_label("Admin token").count() >= 1


def test_post_without_the_csrf_token_is_refused(page: Any, server: ServerProcess) -> None:
    login(page)
    # Same browser, same cookies, but no token: 403, nothing created.
    response = page.context.request.post("/panel/keys", form={"name": "no-token"})
    assert response.status == 403
    response = page.context.request.post("/panel/keys", form={"name": "bad-token", "csrf_token": "x" * 43})
    assert response.status == 403
    response = page.context.request.post(
        "/panel/keys", form={"name": "other-origin"}, headers={"Origin": "http://evil.example"}
    )
    assert response.status == 403
    assert not {"no-token", "bad-token", "other-origin"} & set(_key_names(server))
    # The page's own form (with the token) works.
    page.get_by_label("Key name").fill("with-token")
    page.get_by_role("button", name="Add model access key").click()
    assert "with-token" in _key_names(server)


def test_expired_cookie_leads_to_login(page: Any, server: ServerProcess) -> None:
    login(page)
    expired = session.sign(session.new_session(ttl=60, now=time.time() - 120), ADMIN_TOKEN)
    page.context.add_cookies([{"name": session.COOKIE, "value": expired, "url": server.url}])
    page.goto("/panel/usage")
    assert page.get_by_label("Admin token").is_visible()
    assert "next=%2Fpanel%2Fusage" in page.url
    # Logging in again returns to the page that was asked for.
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/panel/usage")


def test_tampered_cookie_and_logout(page: Any, server: ServerProcess) -> None:
    login(page)
    value = next(c["value"] for c in page.context.cookies() if c["name"] == session.COOKIE)
    _payload, _, mac = value.partition(".")
    forged = session._b64(b'{"sid": "x", "csrf": "y", "exp": 4102444800}') + "." + mac
    page.context.add_cookies([{"name": session.COOKIE, "value": forged, "url": server.url}])
    page.goto("/panel/keys")
    assert page.get_by_label("Admin token").is_visible()
    login(page)
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{server.url}/")
    page.goto("/panel/keys")
    assert page.get_by_label("Admin token").is_visible()


def test_login_attempts_are_rate_limited(tmp_path: Path, browser: Any) -> None:
    proc = ServerProcess(tmp_path / "s", EMPTY_CATALOG, env={"INFERGATE_PANEL_LOGIN_ATTEMPTS": "3"}).start()
    page = new_page(browser, proc)
    try:
        for _ in range(3):
            page.goto("/")
            page.get_by_label("Admin token").fill("wrong")
            page.get_by_role("button", name="Log in").click()
            assert page.get_by_role("alert").inner_text() == "That is not the admin token."
        page.goto("/")
        page.get_by_label("Admin token").fill(ADMIN_TOKEN)  # even the right token waits
        with page.expect_response("**/panel/login") as answer:
            page.get_by_role("button", name="Log in").click()
        assert answer.value.status == 429 and int(answer.value.headers["retry-after"]) >= 1
        assert "Too many failed attempts" in page.get_by_role("alert").inner_text()
        screenshot(page, "login-rate-limited")
    finally:
        page.context.close()
        proc.stop()


def test_without_admin_token_the_panel_says_how_to_set_one(tmp_path: Path, browser: Any) -> None:
    proc = ServerProcess(tmp_path / "s", EMPTY_CATALOG, env={"INFERGATE_ADMIN_TOKEN": ""}).start()
    page = new_page(browser, proc)
    try:
        page.goto("/")
        assert "INFERGATE_ADMIN_TOKEN" in page.inner_text("main")
        assert page.get_by_label("Admin token").count() == 0
        check_page(page, "no-admin-token")
        page.goto("/panel/keys")
        assert "INFERGATE_ADMIN_TOKEN" in page.inner_text("main")
    finally:
        page.context.close()
        proc.stop()


def test_failing_model_shows_why(page: Any, server: ServerProcess) -> None:
    login(page)
    page.goto("/panel/models")
    row = page.locator("#model-status tbody tr").filter(has_text="broken-gguf")
    assert "failing" in row.inner_text()
    assert "could not load" in row.inner_text() and "missing.gguf" in row.inner_text()
    assert "No chat model can serve right now." in page.inner_text("main")
    check_page(page, "models-failing")
