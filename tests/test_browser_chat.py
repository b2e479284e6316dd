"""The chat page's own JavaScript in headless Chromium (Selenium), against the
example served by cdaphne in a child process (``cdaphne.testing``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from .django_helpers import (
    EXAMPLE_DIR,
    browser_available,
    cdaphne_server_available,
    chromium_driver,
    example_env,
    manage,
    migrate,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not browser_available(), reason="needs selenium, chromium, chromedriver"),
    pytest.mark.skipif(not cdaphne_server_available(), reason="cdaphne.server does not exist yet"),
]


def chat_application(database: str) -> Any:
    """Runs in the server's child process: set Django up for the example there
    (the test process itself never configures Django)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "chat_project.settings"
    os.environ["CHAT_DATABASE"] = database
    os.environ.pop("CHAT_CHANNEL_LAYER", None)
    sys.path.insert(0, str(EXAMPLE_DIR))
    from chat_project.asgi import application
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    return ASGIStaticFilesHandler(application)


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from cdaphne.testing import CdaphneProcess

    tmp = tmp_path_factory.mktemp("browser")
    env = example_env(tmp)
    migrate(EXAMPLE_DIR, env)
    process = CdaphneProcess("127.0.0.1", partial(chat_application, env["CHAT_DATABASE"]))
    process.start()
    try:
        if not process.ready.wait(30):
            detail = process.errors.get(timeout=1)[1] if not process.errors.empty() else ""
            raise AssertionError(f"cdaphne did not start:\n{detail}")
        yield f"http://localhost:{process.port.value}"
    finally:
        process.terminate()
        process.join(30)
    assert process.exitcode == 0, f"server exited with {process.exitcode}"


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    drv = chromium_driver(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield drv
    finally:
        drv.quit()


class Page:
    """One browser window showing one chat room."""

    def __init__(self, driver: Any, handle: str) -> None:
        self.driver = driver
        self.handle = handle

    def _focus(self) -> None:
        self.driver.switch_to.window(self.handle)

    def _element(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        self._focus()
        return self.driver.find_element(By.ID, element_id)

    def enter_room_from_index(self, base_url: str, room: str) -> None:
        from selenium.webdriver.support.wait import WebDriverWait

        self._focus()
        self.driver.get(base_url + "/")
        self._element("room-name-input").send_keys(room + "\n")
        WebDriverWait(self.driver, 10).until(lambda d: f"/chat/{room}/" in d.current_url)
        self.wait_connected()

    def open_room(self, url: str) -> None:
        self._focus()
        self.driver.get(url)
        self.wait_connected()

    def wait_connected(self) -> None:
        from selenium.webdriver.support.wait import WebDriverWait

        WebDriverWait(self.driver, 10).until(
            lambda _: self._element("status").text == "connected",
            "the page's WebSocket did not open",
        )

    def post(self, message: str) -> None:
        self._element("chat-message-input").send_keys(message)
        self._element("chat-message-submit").click()

    @property
    def log(self) -> str:
        return str(self._element("chat-log").get_property("value"))

    def wait_for_line(self, line: str) -> None:
        from selenium.webdriver.support.wait import WebDriverWait

        WebDriverWait(self.driver, 10).until(
            lambda _: line in self.log.splitlines(), f"{line!r} never shown"
        )


@pytest.fixture
def pages(driver: Any) -> Iterator[list[Page]]:
    """Three windows of one browser; closed again after the test."""
    first = driver.current_window_handle
    handles = [first]
    for _ in range(2):
        driver.switch_to.new_window("window")
        handles.append(driver.current_window_handle)
    yield [Page(driver, h) for h in handles]
    for handle in handles[1:]:
        driver.switch_to.window(handle)
        driver.close()
    driver.switch_to.window(first)


def test_two_windows_in_one_room_exchange_messages_and_a_third_room_sees_none(
    live_url: str, pages: list[Page]
) -> None:
    one, two, other = pages
    one.enter_room_from_index(live_url, "lobby")
    two.enter_room_from_index(live_url, "lobby")
    other.enter_room_from_index(live_url, "elsewhere")

    one.post("hello from window one")
    one.wait_for_line("anonymous: hello from window one")
    two.wait_for_line("anonymous: hello from window one")
    two.post("hi from window two")
    one.wait_for_line("anonymous: hi from window two")
    two.wait_for_line("anonymous: hi from window two")

    other.post("only here")
    other.wait_for_line("anonymous: only here")
    assert other.log.splitlines() == ["anonymous: only here"]
    assert "only here" not in one.log
    assert "only here" not in two.log


def test_sync_and_async_pages_share_a_room(live_url: str, pages: list[Page]) -> None:
    sync_page, async_page, _ = pages
    sync_page.open_room(live_url + "/chat/mixed/?variant=sync")
    async_page.open_room(live_url + "/chat/mixed/")
    sync_page.post("from the sync consumer")
    async_page.wait_for_line("anonymous: from the sync consumer")
    async_page.post("from the async consumer")
    sync_page.wait_for_line("anonymous: from the async consumer")


@pytest.mark.timeout(300)
def test_example_projects_own_live_server_tests_pass(tmp_path: Path) -> None:
    """``manage.py test chat``: the tutorial's ChannelsLiveServerTestCase tests,
    with only the import switched to cdaphne.testing."""
    env = example_env(tmp_path)
    result = manage(EXAMPLE_DIR, "test", "chat", "-v", "2", "--noinput", env=env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Ran 2 tests" in output
    assert "skipped" not in output
