"""The control panel in headless Chromium: login, keys (create, rename, regenerate, delete), limits."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.browser.conftest import ARTIFACTS, check_page, login, new_page, screenshot
from tests.support.server import ServerProcess


@pytest.fixture
def page(browser: Any, panel_server: ServerProcess) -> Any:
    page = new_page(browser, panel_server)
    yield page
    page.context.close()


def _models_status(server: ServerProcess, secret: str) -> int:
    return httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code


def _key_row(page: Any, name: str) -> Any:
    return page.locator("table.keys tbody tr").filter(
        has=page.get_by_role("rowheader", name=name, exact=True)
    )


def _open_menu_item(page: Any, name: str, item: str) -> None:
    row = _key_row(page, name)
    row.get_by_label(f"Actions for {name}").click()  # the "…" menu
    row.get_by_role("link", name=item).click()


def test_login_page_and_wrong_token(page: Any, panel_server: ServerProcess) -> None:
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto("/")
    check_page(page, "login")
    field = page.get_by_label("Admin token").bounding_box()
    button = page.get_by_role("button", name="Log in").bounding_box()
    assert button["y"] - (field["y"] + field["height"]) >= 8, "the Log in button touches the field"
    # the page's icon loads, and so does /favicon.ico (browsers ask for it on their own)
    icon = page.evaluate("() => fetch(document.querySelector('link[rel=icon]').href).then(r => r.status)")
    assert icon == 200 and not failed, failed
    ico = httpx.get(f"{panel_server.url}/favicon.ico")
    assert ico.status_code == 200 and ico.headers["content-type"].startswith("image/svg+xml")
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text() == "That is not the admin token."
    assert page.url.rstrip("/").endswith("/panel/login")
    page.get_by_label("Admin token").fill(panel_server.admin()["Authorization"].split()[1])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/panel/keys")
    cookie = next(c for c in page.context.cookies() if c["name"] == "infergate_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0


def test_every_page_has_a_strict_csp(page: Any, panel_server: ServerProcess) -> None:
    login(page)
    assert page.goto("/panel/").url == f"{panel_server.url}/panel/keys"  # /panel leads in
    for path in ("/", "/panel/keys", "/panel/models", "/panel/usage", "/panel/jobs", "/panel/responses"):
        response = page.goto(path)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        assert response.headers["cache-control"] == "no-store", path
    assert not page.csp_errors


def test_create_rename_regenerate_delete(page: Any, panel_server: ServerProcess) -> None:
    login(page)
    check_page(page, "keys-empty")
    page.get_by_label("Key name").fill("panel-test")
    page.get_by_role("button", name="Add model access key").click()
    secret_box = page.get_by_label("Secret key")
    first_secret = secret_box.input_value()
    assert first_secret.startswith("sk-ig-")
    assert "shown only once" in page.locator("#new-secret").inner_text()
    assert page.get_by_role("button", name="Copy").is_visible()
    check_page(page, "keys-created")
    assert _models_status(panel_server, first_secret) == 200

    # Shown once: the list, reloaded, never carries the secret again.
    page.goto("/panel/keys")
    assert first_secret not in page.content()
    assert _key_row(page, "panel-test").count() == 1

    # Rename
    _open_menu_item(page, "panel-test", "Rename")
    check_page(page, "key-rename")
    page.get_by_label("Key name").fill("panel-renamed")
    page.get_by_role("button", name="Update").click()
    page.wait_for_url("**/panel/keys?done=*")
    assert _key_row(page, "panel-renamed").count() == 1 and _key_row(page, "panel-test").count() == 0

    # Regenerate: the button stays disabled until the key's name is typed exactly.
    _open_menu_item(page, "panel-renamed", "Regenerate")
    confirm = page.get_by_role("button", name="Regenerate access key")
    assert confirm.is_disabled()
    page.get_by_label("Type panel-renamed to confirm").fill("panel-rename")
    assert confirm.is_disabled()
    check_page(page, "key-regenerate")
    page.get_by_label("Type panel-renamed to confirm").fill("panel-renamed")
    confirm.click()
    second_secret = page.get_by_label("Secret key").input_value()
    assert second_secret.startswith("sk-ig-") and second_secret != first_secret
    assert "previous secret stopped working" in page.locator("#new-secret").inner_text()
    assert _models_status(panel_server, first_secret) == 401  # immediately
    assert _models_status(panel_server, second_secret) == 200

    # The server checks the typed name too (a request without the page's script).
    uuid = _key_row(page, "panel-renamed").get_attribute("data-key")
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    wrong = page.context.request.post(
        f"/panel/keys/{uuid}/delete", form={"csrf_token": csrf, "confirm_name": "nope"}
    )
    assert wrong.status == 400 and "does not match" in wrong.text()
    assert _models_status(panel_server, second_secret) == 200

    # Delete
    page.goto("/panel/keys")
    _open_menu_item(page, "panel-renamed", "Delete")
    check_page(page, "key-delete")
    page.get_by_label("Type panel-renamed to confirm").fill("panel-renamed")
    page.get_by_role("button", name="Delete access key").click()
    page.wait_for_url("**/panel/keys?done=*")
    assert "no longer works" in page.get_by_role("status").inner_text()
    page.goto("/panel/keys?done=Call+0800+now")  # only known codes show a message
    assert page.get_by_role("status").count() == 0
    assert _key_row(page, "panel-renamed").count() == 0
    assert _models_status(panel_server, second_secret) == 401


def test_key_list_shows_last_use_and_month_spend(page: Any, panel_server: ServerProcess) -> None:
    secret = panel_server.create_key("used-key")["secret_key"]
    r = httpx.post(
        f"{panel_server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
        },
        timeout=120,
    )
    assert r.status_code == 200
    panel_server.create_key("unused-key")
    login(page)
    used = _key_row(page, "used-key").locator("td").nth(2).inner_text()
    assert used.endswith("UTC")
    assert _key_row(page, "unused-key").locator("td").nth(2).inner_text() == "never"
    assert _key_row(page, "used-key").locator("td").nth(3).inner_text().startswith("$")


def test_limits_form(page: Any, panel_server: ServerProcess) -> None:
    info = panel_server.create_key("limited")
    login(page)
    _open_menu_item(page, "limited", "Limits")
    check_page(page, "key-limits")
    page.get_by_label("Requests per minute").fill("7")
    page.get_by_label("Tokens per minute").fill("")
    page.get_by_label("Concurrent requests").fill("2")
    page.get_by_label("Monthly budget (USD)").fill("1.5")
    page.get_by_role("button", name="Save limits").click()
    page.wait_for_url("**/panel/keys?done=*")
    api = httpx.get(
        f"{panel_server.url}/v2/gen-ai/models/api_keys/{info['uuid']}/limits", headers=panel_server.admin()
    ).json()
    assert api["limits"] == {"rpm": 7, "tpm": None, "max_concurrency": 2, "monthly_budget_usd": 1.5}
    assert (
        _key_row(page, "limited").locator("td").nth(4).inner_text()
        == "7 requests/min · 2 at once · $1.50 a month"
    )
    # A bad number is refused with the field named, nothing saved.
    _open_menu_item(page, "limited", "Limits")
    assert page.get_by_label("Requests per minute").input_value() == "7"
    page.get_by_label("Requests per minute").fill("lots")
    page.get_by_role("button", name="Save limits").click()
    assert "Requests per minute: enter a whole number" in page.get_by_role("alert").inner_text()
    screenshot(page, "key-limits-error")


def test_dark_mode_pages_pass_axe(browser: Any, panel_server: ServerProcess) -> None:
    page = new_page(browser, panel_server, dark=True)
    try:
        page.goto("/")
        check_page(page, "login-dark")
        login(page)
        check_page(page, "keys-dark")
        page.goto("/panel/models")
        check_page(page, "models-dark")
        page.goto("/panel/usage")
        page.wait_for_selector("#chart-day-tokens canvas")
        check_page(page, "usage-dark")
    finally:
        page.context.close()


def test_narrow_screen(browser: Any, panel_server: ServerProcess) -> None:
    context = browser.new_context(base_url=panel_server.url, viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        panel_server.create_key("a-rather-long-key-name-for-a-phone")
        login(page)
        screenshot(page, "keys-phone")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"the keys page scrolls sideways on a phone ({width}px)"
    finally:
        context.close()


def test_keyboard_only_create(page: Any, panel_server: ServerProcess) -> None:
    login(page)
    page.keyboard.press("Tab")  # skip link first
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    page.get_by_label("Key name").focus()
    page.keyboard.type("typed-by-keyboard")
    page.keyboard.press("Enter")
    assert page.get_by_label("Secret key").input_value().startswith("sk-ig-")
    # The "…" menu by keyboard: Enter opens it, Tab reaches its items, Escape closes it.
    page.goto("/panel/keys")
    menu = _key_row(page, "typed-by-keyboard").get_by_label("Actions for typed-by-keyboard")
    menu.focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Rename"
    page.keyboard.press("Escape")
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == (
        "Actions for typed-by-keyboard"
    )
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_url("**/rename")
    assert page.evaluate("() => document.activeElement.id") == "name"  # the field is ready to type in


def test_reloading_after_create_or_regenerate_does_nothing_again(
    page: Any, panel_server: ServerProcess
) -> None:
    login(page)
    page.get_by_label("Key name").fill("reload-me")
    page.get_by_role("button", name="Add model access key").click()
    secret = page.get_by_label("Secret key").input_value()
    with page.expect_response("**/panel/keys") as answer:
        page.reload()  # the browser sends the form again
    assert answer.value.request.method == "POST" and answer.value.status == 409
    assert "already sent" in page.get_by_role("alert").inner_text()
    assert _key_row(page, "reload-me").count() == 1 and secret not in page.content()
    _open_menu_item(page, "reload-me", "Regenerate")
    page.get_by_label("Type reload-me to confirm").fill("reload-me")
    page.get_by_role("button", name="Regenerate access key").click()
    new_secret = page.get_by_label("Secret key").input_value()
    page.reload()
    assert "already sent" in page.get_by_role("alert").inner_text()
    assert _models_status(panel_server, new_secret) == 200  # the secret on screen still works


# Items of an open "…" menu that a user could not see or click: outside the viewport, or covered
# (clipped by a scroll box or hidden under something) where elementFromPoint at their centre
# does not land on them.
HIDDEN_MENU_ITEMS = """menu => Array.from(menu.querySelectorAll('li a')).filter(a => {
  const r = a.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) return true;
  if (r.top < 0 || r.left < 0 || r.bottom > window.innerHeight || r.right > window.innerWidth) return true;
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return !(hit && (hit === a || a.contains(hit)));
}).map(a => a.textContent)"""


@pytest.mark.parametrize(
    "viewport", [(1280, 900), (390, 844), (1280, 420)], ids=["desktop", "phone", "short"]
)
def test_key_menu_is_fully_visible_on_first_and_last_rows(
    browser: Any, panel_server: ServerProcess, viewport: tuple[int, int]
) -> None:
    for name in ("menu-one", "menu-two", "menu-three"):
        panel_server.create_key(name)
    context = browser.new_context(
        base_url=panel_server.url, viewport={"width": viewport[0], "height": viewport[1]}
    )
    page = context.new_page()
    try:
        login(page)
        rows = page.locator("table.keys tbody tr")
        assert rows.count() >= 3
        for which, row in (("first", rows.first), ("last", rows.last)):
            # the worst place: the row at the very bottom of the window (no room below it)
            row.evaluate("r => r.scrollIntoView({block: 'end'})")
            row.locator("summary").click()
            menu = row.locator("details.menu")
            try:
                page.wait_for_function(
                    f"menu => ({HIDDEN_MENU_ITEMS})(menu).length === 0",
                    arg=menu.element_handle(),
                    timeout=5000,
                )
            except Exception:
                hidden = menu.evaluate(HIDDEN_MENU_ITEMS)
                screenshot(page, f"key-menu-clipped-{which}-{viewport[0]}x{viewport[1]}")
                pytest.fail(f"{which} row at {viewport}: menu items not visible: {hidden}")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"panel-key-menu-{which}-{viewport[0]}x{viewport[1]}.png"))
            row.locator("details.menu li a", has_text="Delete").click()  # clickable where it shows
            page.wait_for_url("**/delete")
            page.go_back()
    finally:
        context.close()
