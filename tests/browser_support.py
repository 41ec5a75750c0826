"""Fixtures for real-browser tests: Debian's chromium driven by Playwright against a live server.

Use them from a test module with::

    from browser_support import *  # noqa: F403  (the fixtures)
    from browser_support import shot

The star import puts the fixtures in the module's namespace, where pytest finds them; naming them
instead trips ruff's F811 when a test takes them as arguments. Other test modules are not
affected, and nothing here starts until a test requests a fixture.

- ``chromium_path`` (session): the chromium to drive; skips when there is none.
- ``live_server`` (function): base URL of create_app() served over real HTTP on 127.0.0.1.
- ``browser`` (session): a headless chromium launched by Playwright.
- ``page`` (function): a page in a fresh 1280x900 context; ``page.console_errors`` lists its
  console errors, uncaught exceptions and CSP violations.
- ``shot(page, name)``: saves artifacts/screenshots/<name>.png under the repo root.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tools.browser import find_chromium, works

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
VIEWPORT = {"width": 1280, "height": 900}
# The machine has no network and runs as root: no sandbox, and nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
# Generous for a local server on a busy 2-core machine, yet well under pytest's 180 s timeout.
ACTION_TIMEOUT_MS = 15_000

__all__ = ["browser", "chromium_path", "live_server", "page", "shot"]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Path of the chromium to drive: $BACKSTOP_CHROMIUM, else the usual places; never installs."""
    override = os.environ.get("BACKSTOP_CHROMIUM")
    if override:
        if not works(override):
            pytest.skip(f"BACKSTOP_CHROMIUM={override} does not run `--version`")
        return override
    path = find_chromium()
    if path is None:
        pytest.skip("no chromium found (python3 tools/browser.py installs Debian's package)")
    return path


@pytest.fixture
def live_server(r) -> Iterator[str]:
    """Base URL of the web role served by gunicorn (as `./run` does) on a free port.

    A real server, not werkzeug's: websocket endings are handled as in production. Function
    scope: it starts after ``r`` flushed Redis, with the environment the test has set.
    """
    from backstop import redis_server

    port = redis_server.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--threads", "16", "--graceful-timeout", "5", "--log-level", "warning",
         "app:create_app()"],
        cwd=ROOT, env={"BACKSTOP_TASK_MODULES": "tests.jobs_for_tests", **os.environ,
                       "PYTHONPATH": str(ROOT)})
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Stop gunicorn as a supervisor would: TERM, and KILL if it is not gone in time (a
    socket handler still closing after Redis went away may hold the graceful stop)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the web role exited with {proc.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the web role did not listen on {port} within {seconds} s")


@pytest.fixture(scope="session")
def browser(chromium_path):
    """Headless chromium, launched once per session by Playwright from chromium_path."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A page in a fresh context (no cookies or storage from other tests), 1280x900.

    ``page.console_errors`` collects what a person would see as red in the devtools console.
    """
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    new_page = context.new_page()
    new_page.console_errors = []
    watch_console(new_page, new_page.console_errors)
    yield new_page
    context.close()


def watch_console(page, errors: list[str]) -> None:
    """Append console errors, CSP violations and uncaught exceptions of page to errors."""

    def on_console(message) -> None:
        where = message.location.get("url", "")
        if is_automatic_favicon_miss(message.text, where):
            return
        # Chromium logs report-only CSP violations at level info, enforced ones at error.
        if message.type == "error" or "Content Security Policy" in message.text:
            errors.append(f"console {message.type}: {message.text} ({where})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"uncaught exception: {exc}"))


def is_automatic_favicon_miss(text: str, url: str) -> bool:
    """True for the 404 of /favicon.ico, which chromium asks for itself when a page names no icon.

    The page did nothing wrong there, so a test should not fail over it; an icon that the page
    names at any other path and that fails to load is still reported.
    """
    return text.startswith("Failed to load resource") and urlsplit(url).path == "/favicon.ico"


def shot(page, name: str) -> Path:
    """Save a full-page screenshot as artifacts/screenshots/<name>.png and return its path."""
    if not name or Path(name).name != name:
        raise ValueError(f"screenshot name must be a plain file name, not {name!r}")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
