"""The inspector page shipped in the Python package, in headless Chromium via Selenium.

No Node.js needed: the page is the committed bundle in ``src/flowstate/static``. The full
browser suite (Playwright: forms, two tabs, delete, 360 px, dark, /docs offline, screenshots)
is in ``clients/js/test/inspector.e2e.test.ts``; this is the Python-only smoke test. Needs
the Debian packages ``chromium`` and ``chromium-driver``; skipped with the reason when missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowstate.cli.demo import create_server
from flowstate.http import create_app

from .http_support import SECRET, serve_in_thread

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# CI sets FLOWSTATE_REQUIRE_BROWSER=1 after installing Chromium: there, missing parts fail.
_REQUIRED = os.environ.get("FLOWSTATE_REQUIRE_BROWSER") == "1"


def _missing(reason: str) -> None:
    if _REQUIRED:
        raise RuntimeError(f"{reason} [FLOWSTATE_REQUIRE_BROWSER=1]")
    pytest.skip(reason, allow_module_level=True)


try:
    import selenium  # noqa: F401
except ImportError:
    _missing("selenium is not installed (pip install selenium)")
if CHROMIUM is None or CHROMEDRIVER is None:
    _missing("headless Chromium is not installed (apt-get install -y chromium chromium-driver)")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

TOKEN = "browser-token"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def driver() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="flowstate-chromium-")
    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None  # the module skips (or fails) without it
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(browser: Any, condition: Any, timeout: float = 15) -> Any:
    # The page re-renders as events arrive: an element found a moment ago may be replaced
    # before it is read, so a stale reference means "look again", not a failure.
    return WebDriverWait(
        browser, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    ).until(lambda b: condition(b))


def leaf(browser: Any, path: str) -> str | None:
    rows = browser.find_elements(By.CSS_SELECTOR, f'#client-data li[data-path="{path}"] > .leaf')
    return rows[0].text if rows else None


def test_inspector_runs_actions_and_follows_live_changes(driver: Any, tmp_path: Path) -> None:
    server = create_server(f"sqlite:///{tmp_path / 'browser.db'}", auth={TOKEN: "pat"})
    with serve_in_thread(create_app(server, close_server=True)) as url:
        driver.get(f"{url}/?token={TOKEN}")
        wait_for(driver, lambda b: b.find_element(By.ID, "status").text == "connected")
        assert "token" not in driver.current_url  # dropped from the address bar
        amount = driver.find_element(By.CSS_SELECTOR, '.fields input[name="amount"]')
        assert amount.get_attribute("value") == "1"  # prefilled from the input schema
        driver.find_element(By.CSS_SELECTOR, '.fields [name="note"]').send_keys(SECRET)
        driver.find_element(By.ID, "run").click()
        wait_for(driver, lambda b: leaf(b, "session.messageCount") == "1")
        session_id = driver.find_element(By.ID, "session-id").text
        assert session_id

        Select(driver.find_element(By.ID, "action")).select_by_value("write_file")
        driver.find_element(By.ID, "run").click()
        wait_for(driver, lambda b: leaf(b, "session.files.0") == '"files/notes/todo.md"')

        # A change made elsewhere (another client, another session of the user) arrives live.
        response = httpx.post(
            f"{url}/api/flows/demo/actions/theme",
            json={"input": {"theme": "dark"}},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 200
        wait_for(driver, lambda b: leaf(b, "user.theme") == '"dark"')
        types = [
            e.get_attribute("data-type")
            for e in driver.find_elements(By.CSS_SELECTOR, "#events > li")
        ]
        assert types[-1] == "request.created" and "state_change" in types
        assert SECRET not in driver.page_source
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "browser.png"))
    assert (ARTIFACTS / "browser.png").stat().st_size > 10_000
