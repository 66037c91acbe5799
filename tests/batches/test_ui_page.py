"""The Batches page in a real browser (Debian's Chromium through Playwright, tests/ui/browser.py)
against the studio's HTTP app on loopback with a real database: a user sees its own batches with
state and done/total, cancels one, and sees none of another user's."""

from __future__ import annotations

import pytest

from studio.api.app import create_app
from tests.batches.conftest import new_batch, line
from tests.loopback import ServerThread
from tests.ui.browser import chromium_page, need_chromium, screenshot_dir

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]  # no Ray: a uvicorn thread and a browser


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_batches_page_shows_progress_and_cancels(settings, api, keys):
    need_chromium()
    mine = new_batch(api, keys["alice"], [line("a", "x"), line("b", "y"), "{broken"])
    other = new_batch(api, keys["bob"], [line("c", "z")])
    server = ServerThread(create_app(settings)).start()
    try:
        with chromium_page(server.url, screenshot_dir()) as b:
            b.login(keys["alice"])
            b.goto("#/batches")
            b.wait(f"#batches-list code:text-is('{mine['id']}')")
            row = b.page.locator("#batches-list tbody tr")
            assert row.count() == 1 and other["id"] not in b.page.inner_text("main")
            assert "0/3" in row.inner_text() and row.locator(".badge").inner_text() == "validating"
            b.shot("batches")
            row.locator("button:text-is('Cancel')").click()
            b.wait("#batches-list .badge:text-is('cancelled')")
            assert b.page.locator("#batches-list button:text-is('Cancel')").count() == 0
            b.assert_clean()
    finally:
        server.stop()
