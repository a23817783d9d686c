"""Playwright fixtures: Debian's Chromium (never a downloaded browser), a panel server, helpers.

Screenshots go to $PLAYWRIGHT_ARTIFACTS (default tests/artifacts/, git-ignored).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.support.server import ADMIN_TOKEN, ServerProcess

CHROMIUM = os.environ.get("INFERGATE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("PLAYWRIGHT_ARTIFACTS") or Path(__file__).parent.parent / "artifacts")
BLOCKING_IMPACTS = ("serious", "critical")


# Per module, not per session: Playwright's sync API keeps an event loop running in the main thread
# while it is open, and every later test that calls asyncio.run() would fail on it.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (`make test` does it)")
    with sync_playwright() as pw:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses to sandbox as root
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def panel_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The built-in models (SmolLM2 for the chat playground, the speech models when installed)."""
    proc = ServerProcess(tmp_path_factory.mktemp("panel"), env={"INFERGATE_KEY_CACHE_TTL": "5"}).start()
    yield proc
    proc.stop()


def new_page(browser: Any, server: ServerProcess, dark: bool = False) -> Any:
    context = browser.new_context(
        base_url=server.url, color_scheme="dark" if dark else "light", viewport={"width": 1280, "height": 900}
    )
    page = context.new_page()
    page.csp_errors = []  # type: ignore[attr-defined]
    page.on(
        "console",
        lambda m: page.csp_errors.append(m.text) if "Content Security Policy" in m.text else None,  # type: ignore[attr-defined]
    )
    page.js_errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.js_errors.append(str(exc)))  # type: ignore[attr-defined]
    return page


def login(page: Any, token: str = ADMIN_TOKEN) -> None:
    page.goto("/")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/panel/keys")


def check_page(page: Any, name: str) -> None:
    """axe-core (vendored, served by the panel itself) finds no serious or critical violation,
    the CSP blocked nothing the page needs, and a full-page screenshot is saved."""
    page.add_script_tag(url="/panel/static/axe.min.js")
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in BLOCKING_IMPACTS
    ]
    assert not bad, f"{name}: axe violations:\n" + "\n".join(bad)
    assert not page.csp_errors, f"{name}: the CSP blocked something: {page.csp_errors}"
    assert not page.js_errors, f"{name}: uncaught script errors: {page.js_errors}"
    screenshot(page, name)


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"panel-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
