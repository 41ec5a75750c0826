"""The browser chain end to end: Debian's chromium, Playwright, and the app on a live server."""

from __future__ import annotations

from browser_support import shot


def test_index_renders_the_queues_in_a_real_browser(live_server, page):
    from backstop import users

    users.create("smoke", "viewer", "correct horse battery")
    page.goto(live_server + "/")
    page.fill("input[name=name]", "smoke")
    page.fill("input[name=password]", "correct horse battery")
    page.click("button.primary")
    page.wait_for_url("**/overview")
    table = page.locator("table")
    for queue in ("email", "plugins"):
        assert table.get_by_role("rowheader", name=queue, exact=True).is_visible()
    shot(page, "smoke-index")
    assert page.console_errors == []
