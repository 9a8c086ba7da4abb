"""The web page in headless Chromium: connect, run actions, watch client data update live.

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the ``selenium`` Python
package; skipped (with the reason) when any is missing. No browser is ever downloaded.
"""

from __future__ import annotations

import json
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
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

TOKEN = "browser-token"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def driver() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="flowstate-chromium-")
    options = webdriver.ChromeOptions()
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


def client_data(browser: Any) -> dict[str, Any]:
    text = browser.find_element(By.ID, "client-data").text
    try:
        data: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return data


def wait_for(browser: Any, condition: Any, timeout: float = 15) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda b: condition(b))


def run_action(browser: Any, action: str, input: dict[str, Any]) -> None:
    Select(browser.find_element(By.ID, "action")).select_by_value(action)
    box = browser.find_element(By.ID, "input")
    box.clear()
    box.send_keys(json.dumps(input))
    browser.find_element(By.ID, "run").click()


def test_page_runs_actions_and_shows_live_client_data(driver: Any, tmp_path: Path) -> None:
    server = create_server(f"sqlite:///{tmp_path / 'browser.db'}", auth={TOKEN: "pat"})
    with serve_in_thread(create_app(server, close_server=True)) as url:
        driver.get(f"{url}/?token={TOKEN}")
        wait_for(driver, lambda b: b.find_element(By.ID, "status").text == "connected")
        assert "token" not in driver.current_url  # dropped from the address bar
        assert Select(driver.find_element(By.ID, "kind")).first_selected_option.text == "demo"
        prefilled = json.loads(driver.find_element(By.ID, "input").get_attribute("value"))
        assert prefilled == {"amount": 1, "note": ""}  # from the action's input schema

        run_action(driver, "increment", {"amount": 3, "note": SECRET})
        wait_for(
            driver,
            lambda b: (
                client_data(b).get("clientData", {}).get("session", {}).get("messageCount") == 3
            ),
        )
        events = [
            e.get_attribute("data-type")
            for e in driver.find_elements(By.CSS_SELECTOR, "#events li")
        ]
        assert events[0] == "request.created" and events[-1] == "request.completed"
        assert "state_change" in events
        session_id = Select(driver.find_element(By.ID, "session")).first_selected_option
        assert session_id.get_attribute("value")  # the new session is now selected

        run_action(driver, "write_file", {"path": "notes/a.md", "content": "hello"})
        wait_for(
            driver,
            lambda b: (
                client_data(b).get("clientData", {}).get("session", {}).get("files")
                == ["files/notes/a.md"]
            ),
        )
        run_action(driver, "increment", {"amount": 2})
        wait_for(driver, lambda b: client_data(b)["clientData"]["session"]["messageCount"] == 5)

        # A change made elsewhere (another session of the same user) arrives live.
        response = httpx.post(
            f"{url}/api/flows/demo/actions/theme",
            json={"input": {"theme": "dark"}},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 200
        wait_for(driver, lambda b: client_data(b)["clientData"].get("user") == {"theme": "dark"})
        wait_for(
            driver, lambda b: "dark" in b.find_element(By.TAG_NAME, "body").get_attribute("class")
        )
        live = driver.find_elements(By.CSS_SELECTOR, "#events li.user")
        assert live and "[live] state_change" in live[-1].text

        run_action(driver, "mode", {"mode": "sleeping"})
        wait_for(driver, lambda b: "validation_error" in b.find_element(By.ID, "run-error").text)

        wait_for(driver, lambda b: b.find_element(By.ID, "run").is_enabled())
        assert SECRET not in driver.page_source
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "browser.png"))
    assert (ARTIFACTS / "browser.png").stat().st_size > 10_000
